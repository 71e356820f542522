//! A minimal HTTP GET and a parser for the Prometheus/OpenMetrics text exposition, for assertions.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One sample: metric name, labels, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric (sample) name, e.g. `pinflow_source_up`.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// HTTP/1.0 GET; returns (status, body). Times out after `timeout`.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, None, timeout)
}

/// One HTTP/1.0 request, with a JSON `body` if given; returns (status, body). Times out after
/// `timeout`.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    match body {
        None => write!(s, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?,
        Some(b) => write!(
            s,
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        )?,
    }
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// `/api/v1/sources` (source name → `{up, detail, …}`), or `None` while pinflow does not answer
/// it with 200 and JSON.
pub fn sources(addr: SocketAddr) -> Option<BTreeMap<String, serde_json::Value>> {
    let (status, body) = http_get(addr, "/api/v1/sources", Duration::from_secs(2)).ok()?;
    (status == 200).then(|| serde_json::from_str(&body).ok())?
}

/// Parses exposition text into samples (comments skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut it = line[name_end..].chars();
    let mut rest = line[name_end..].to_string();
    if line[name_end..].starts_with('{') {
        it.next();
        loop {
            let mut key = String::new();
            let mut closed = false;
            for c in it.by_ref() {
                match c {
                    '=' => break,
                    '}' => {
                        closed = true;
                        break;
                    }
                    ',' | ' ' => {}
                    c => key.push(c),
                }
            }
            if closed {
                break;
            }
            if it.next()? != '"' {
                return None;
            }
            let mut val = String::new();
            loop {
                match it.next()? {
                    '\\' => match it.next()? {
                        'n' => val.push('\n'),
                        c => val.push(c),
                    },
                    '"' => break,
                    c => val.push(c),
                }
            }
            labels.insert(key, val);
        }
        rest = it.as_str().to_string();
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The value of `pinflow_source_up{source}`, if the scrape has it.
pub fn source_up(samples: &[Sample], source: &str) -> Option<f64> {
    select(samples, "pinflow_source_up", &[("source", source)])
        .first()
        .map(|s| s.value)
}

/// Samples named `name` whose labels include every `(k, v)` of `want`.
pub fn select<'a>(samples: &'a [Sample], name: &str, want: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_with_escapes() {
        let s = parse("# HELP x y\nm_total{a=\"1\",b=\"q\\\"x\\\\\"} 2.5\nplain 3\n# EOF\n");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].labels["b"], "q\"x\\");
        assert_eq!(s[0].value, 2.5);
        assert_eq!(s[1].name, "plain");
        assert_eq!(select(&s, "m_total", &[("a", "1")]).len(), 1);
    }
}

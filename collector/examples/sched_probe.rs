//! Loads pinflow's `sched_switch` placement probe and keeps it attached until stdin closes.
//!
//! Used by `cargo xtask bench` (xtask/src/bench_sched.rs) to measure the probe's per-switch cost,
//! and handy by hand: `sudo target/debug/examples/sched_probe --mode raw_tp --watch 1234:0-3`.
//!
//! Arguments: `[--mode tp_btf|raw_tp|tracepoint|nop] [--no-stats] [--watch TID:CPULIST]...`
//! (`nop` attaches the object's empty tp_btf program instead: the benchmark's floor).
//! Prints `ready mode=<mode>` once attached, then answers one line per stdin command:
//! `watch TID CPULIST`, `unwatch TID`, `placement TID`, `dedicate CPULIST OWNER_TID` (mark the
//! CPUs dedicated to a vCPU thread; the intrusion path runs on every switch there), `undedicate`,
//! `stolen CPU`, `intruders`, `stats`, `quit`.

use std::io::{BufRead, Write};

use pinflow::model::cpuset::CpuSet;
use pinflow::sources::sched_bpf::{AttachMode, CpuOwner, SchedProbe};
use std::collections::HashMap;

fn parse_mode(s: &str) -> Result<AttachMode, String> {
    AttachMode::ALL
        .into_iter()
        .find(|m| m.to_string() == s)
        .ok_or_else(|| format!("unknown mode {s:?} (tp_btf, raw_tp, tracepoint)"))
}

fn parse_watch(tid: &str, cpus: &str) -> Result<(u32, CpuSet), String> {
    let tid = tid.parse().map_err(|_| format!("bad tid {tid:?}"))?;
    let cpus = cpus.parse().map_err(|e| format!("{e}"))?;
    Ok((tid, cpus))
}

/// Attaches the empty `pf_switch_nop` program and waits for stdin to close (no commands but `stats`).
fn run_nop(stats: bool) -> Result<(), String> {
    use aya::programs::BtfTracePoint;
    let mut ebpf =
        aya::Ebpf::load(pinflow::sources::sched_bpf::ebpf_object()).map_err(|e| e.to_string())?;
    let btf = aya::Btf::from_sys_fs().map_err(|e| e.to_string())?;
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(collector_common::sched::PROG_NOP)
        .ok_or("no nop program in the object")?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    prog.load("sched_switch", &btf).map_err(|e| e.to_string())?;
    prog.attach().map_err(|e| e.to_string())?;
    let _stats = if stats {
        aya::sys::enable_stats(aya::sys::Stats::RunTime).ok()
    } else {
        None
    };
    println!("ready mode=nop stats={stats}");
    for line in std::io::stdin().lines() {
        match line.as_deref().map(str::trim) {
            Ok("stats") => {
                let info = ebpf
                    .program(collector_common::sched::PROG_NOP)
                    .and_then(|p| p.info().ok());
                match info {
                    Some(i) => println!(
                        "stats name={} run_time_ns={} run_count={}",
                        collector_common::sched::PROG_NOP,
                        i.run_time().as_nanos(),
                        i.run_count()
                    ),
                    None => println!("stats none"),
                }
            }
            Ok("quit") | Err(_) => break,
            Ok(other) => println!("error nop mode only answers stats/quit, not {other:?}"),
        }
    }
    Ok(())
}

fn run() -> Result<(), String> {
    let mut mode = None;
    let mut nop = false;
    let mut stats = true;
    let mut watches = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--mode" => {
                let m = args.next().ok_or("--mode needs a value")?;
                if m == "nop" {
                    nop = true;
                } else {
                    mode = Some(parse_mode(&m)?);
                }
            }
            "--no-stats" => stats = false,
            "--watch" => {
                let v = args.next().ok_or("--watch needs TID:CPULIST")?;
                let (tid, cpus) = v.split_once(':').ok_or("--watch needs TID:CPULIST")?;
                watches.push(parse_watch(tid, cpus)?);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if nop {
        return run_nop(stats);
    }
    let mut probe = match mode {
        Some(m) => SchedProbe::load_with(m),
        None => SchedProbe::load(),
    }
    .map_err(|e| e.to_string())?;
    probe.set_bpf_stats(stats).map_err(|e| e.to_string())?;
    for (tid, cpus) in &watches {
        probe.watch(*tid, cpus).map_err(|e| e.to_string())?;
    }
    let mut out = std::io::stdout().lock();
    let say = |out: &mut std::io::StdoutLock<'_>, line: String| {
        // A closed stdout only loses answers; the probe keeps running until stdin closes.
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    };
    say(
        &mut out,
        format!(
            "ready mode={} stats={}",
            probe.mode(),
            probe.stats_enabled()
        ),
    );
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["watch", tid, cpus] => parse_watch(tid, cpus)
                .and_then(|(t, c)| probe.watch(t, &c).map_err(|e| e.to_string()))
                .map_or_else(|e| format!("error {e}"), |()| "ok".to_string()),
            ["unwatch", tid] => tid
                .parse()
                .map_err(|_| "bad tid".to_string())
                .and_then(|t| probe.unwatch(t).map_err(|e| e.to_string()))
                .map_or_else(|e| format!("error {e}"), |()| "ok".to_string()),
            ["placement", tid] => match tid.parse().map(|t| probe.placement(t)) {
                Ok(Ok(p)) => format!("placement {p:?}"),
                Ok(Err(e)) => format!("error {e}"),
                Err(_) => "error bad tid".to_string(),
            },
            ["dedicate", cpus, tid] => match (cpus.parse::<CpuSet>(), tid.parse()) {
                (Ok(cpus), Ok(tid)) => {
                    let owners: HashMap<u32, CpuOwner> = cpus
                        .iter()
                        .map(|c| (c, CpuOwner { domain: 1, tid }))
                        .collect();
                    match probe.set_dedicated(&owners) {
                        0 => "ok".to_string(),
                        n => format!("error {n} map writes failed"),
                    }
                }
                _ => "error bad cpu list or tid".to_string(),
            },
            ["undedicate"] => match probe.set_dedicated(&HashMap::new()) {
                0 => "ok".to_string(),
                n => format!("error {n} map writes failed"),
            },
            ["stolen", cpu] => match cpu.parse().map(|c| probe.stolen(c)) {
                Ok(Ok(ns)) => format!("stolen {ns:?}"),
                Ok(Err(e)) => format!("error {e}"),
                Err(_) => "error bad cpu".to_string(),
            },
            ["intruders"] => match probe.intruders() {
                Ok(v) => format!("intruders {v:?}"),
                Err(e) => format!("error {e}"),
            },
            ["stats"] => match probe.program_stats().first() {
                Some(s) => format!(
                    "stats name={} run_time_ns={} run_count={}",
                    s.name, s.run_time_ns, s.run_count
                ),
                None => "stats none".to_string(),
            },
            ["quit"] => break,
            _ => format!("error unknown command {line:?}"),
        };
        say(&mut out, answer);
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("sched_probe: {e}");
        std::process::exit(1);
    }
}

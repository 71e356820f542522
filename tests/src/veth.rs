//! Real kernel network devices for OVS tests: veth pairs (removed on drop, also when the test
//! fails) and frames sent into one end with a raw `AF_PACKET` socket.

use std::ffi::CString;

/// A veth pair `a` ↔ `b`, both up with IPv6 off (no router solicitations or DAD packets moving the
/// counters); deleted on drop.
pub struct Veth {
    /// The end a test gives to OVS.
    pub a: String,
    /// The peer the test sends from and takes down.
    pub b: String,
}

impl Veth {
    /// Creates `<prefix>a` ↔ `<prefix>b` (prefix ≤ 14 bytes; a leftover pair of that name from a
    /// crashed run is replaced).
    pub fn new(prefix: &str) -> Veth {
        let (a, b) = (format!("{prefix}a"), format!("{prefix}b"));
        assert!(a.len() <= 15, "interface name {a:?} too long");
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &a])
            .output();
        crate::run(
            "ip",
            &["link", "add", &a, "type", "veth", "peer", "name", &b],
        );
        let v = Veth { a, b };
        for d in [&v.a, &v.b] {
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{d}/disable_ipv6"), "1");
            crate::run("ip", &["link", "set", d, "up"]);
        }
        v
    }

    /// `ip link set <dev> up|down`.
    pub fn set(&self, dev: &str, up: bool) {
        crate::run("ip", &["link", "set", dev, if up { "up" } else { "down" }]);
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        // Deleting one end deletes the pair.
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.a])
            .output();
    }
}

/// The kernel's counter `/sys/class/net/<dev>/statistics/<name>`.
pub fn sys_stat(dev: &str, name: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{dev}/statistics/{name}"))
        .unwrap_or_else(|e| panic!("{dev} {name}: {e}"))
        .trim()
        .parse()
        .expect("counter")
}

/// Sends `count` Ethernet frames of `len` bytes (without FCS; ethertype 0x88b5, local
/// experimental) out of `dev` with a raw `AF_PACKET` socket; returns how many the kernel took.
pub fn send_frames(dev: &str, count: usize, len: usize) -> usize {
    assert!(len >= 60, "short frames are padded");
    let name = CString::new(dev).expect("name");
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(ifindex > 0, "no device {dev}");
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    let mut frame = vec![0u8; len];
    frame[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&frame[..6]);
    let mut sent = 0;
    for _ in 0..count {
        // SAFETY: the buffer and the address outlive the call; lengths are theirs.
        let n = unsafe {
            libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n == len as isize {
            sent += 1;
        }
        // Paced: the userspace datapath polls AF_PACKET, and a burst would overrun its socket buffer.
        if sent % 50 == 0 {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    // SAFETY: closes the socket opened above.
    unsafe { libc::close(fd) };
    sent
}

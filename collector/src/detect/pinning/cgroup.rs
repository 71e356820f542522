//! The `cgroup` check: a vCPU or pinned I/O thread is not in its domain's `vcpuN`/`iothreadN`
//! cgroup (libvirt's layout).

use super::{DomainView, Finding, Subject};

/// The domain's cgroup: the parent of the QEMU main thread's `emulator` cgroup (libvirt's layout).
pub(super) fn domain_cgroup(main_cgroup: Option<&str>) -> Option<&str> {
    main_cgroup?.strip_suffix("/emulator")
}

/// A vCPU thread outside `<domain cgroup>/vcpuN` (an I/O thread outside `iothreadN`); `actual`
/// is its cgroup relative to the domain's, or the full path when it is outside the domain's
/// cgroup.
pub(super) fn check(d: &DomainView<'_>, s: &Subject<'_>) -> Option<Finding> {
    let (want, state) = s.cgroup_leaf()?;
    let root = domain_cgroup(d.obs.main_cgroup.as_deref())?;
    let path = state.cgroup.as_deref()?;
    let relative = path.strip_prefix(root).and_then(|r| r.strip_prefix('/'));
    (relative != Some(want.as_str())).then(|| Finding::new(&want, relative.unwrap_or(path)))
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;

    #[test]
    fn vcpu_thread_in_emulator_cgroup_is_cgroup_drift() {
        let mut a = healthy("a", 101, &["0"]);
        a.threads.get_mut(&101).unwrap().cgroup =
            Some("/machine/qemu-1-a.libvirt-qemu/emulator".into());
        let r = evaluate(&[a]);
        assert_eq!(
            drifts(&r, "a"),
            vec![(Check::Cgroup, "0".into(), "vcpu0".into(), "emulator".into())]
        );
    }

    #[test]
    fn thread_outside_the_domain_cgroup_shows_its_full_path() {
        let mut a = healthy("a", 101, &["0"]);
        a.threads.get_mut(&101).unwrap().cgroup = Some("/user.slice".into());
        assert_eq!(
            drifts(&evaluate(&[a.clone()]), "a"),
            vec![(
                Check::Cgroup,
                "0".into(),
                "vcpu0".into(),
                "/user.slice".into()
            )]
        );
        // Without the QEMU main thread's cgroup there is no domain cgroup to compare with.
        a.main_cgroup = None;
        assert!(drifts(&evaluate(&[a]), "a").is_empty());
    }
}

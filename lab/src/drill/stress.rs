//! The stress phase, like the original's Chaos Mesh StressChaos: `stress-ng` with one CPU
//! worker at 80 % load and one VM worker holding 100 MB, for a fixed time, on chosen clusters.
//!
//! So that the cluster's agent sees it, `stress-ng` starts inside the cluster's cgroup (the one
//! that also holds its `bao` process, see [`crate::group::Cgroups`]): a tiny shell writes
//! its own pid into `cgroup.procs` and then `exec`s `stress-ng`, so every worker is born inside.
//! Without cgroups it still runs (and still competes for the machine), and the drill says so.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use crate::LabError;
use crate::group::DrGroup;
use crate::process::ChildGuard;

/// CPU load of the CPU worker, percent.
pub const CPU_LOAD_PERCENT: u32 = 80;
/// Memory the VM worker holds.
pub const VM_BYTES: &str = "100M";

/// Starts `stress-ng` for `duration` on every cluster in `clusters`; the processes belong to
/// the group (they die with it). Returns whether they run inside the clusters' cgroups.
pub fn start(
    group: &mut DrGroup,
    clusters: &[String],
    duration: Duration,
) -> Result<bool, LabError> {
    let stress_ng = crate::tools::find("stress-ng")?;
    let secs = duration.as_secs().max(1);
    let mut in_cgroups = true;
    for name in clusters {
        if group.cluster(name).is_none() {
            return Err(LabError::Invalid(format!(
                "--stress {name}: no such cluster"
            )));
        }
        let cgroup = group
            .cgroups()
            .and_then(|c| c.of(name))
            .map(Path::to_path_buf);
        in_cgroups &= cgroup.is_some();
        let log = group.dir().join(format!("stress-{name}.log"));
        let stress_args = [
            "--cpu".to_owned(),
            "1".to_owned(),
            "--cpu-load".to_owned(),
            CPU_LOAD_PERCENT.to_string(),
            "--vm".to_owned(),
            "1".to_owned(),
            "--vm-bytes".to_owned(),
            VM_BYTES.to_owned(),
            "--vm-keep".to_owned(),
            "--timeout".to_owned(),
            format!("{secs}s"),
        ];
        // `sh -c 'echo $$ > procs; exec stress-ng "$@"' sh <procs> <stress-ng> args...`
        let mut args: Vec<OsString> = vec![
            "-c".into(),
            "if [ -n \"$1\" ]; then echo $$ > \"$1\"; fi; shift; exec \"$@\"".into(),
            "vault-dr-stress".into(),
            cgroup
                .map(|c| c.join("cgroup.procs").into_os_string())
                .unwrap_or_default(),
            stress_ng.clone().into_os_string(),
        ];
        args.extend(stress_args.into_iter().map(OsString::from));
        let child = ChildGuard::spawn(
            &format!("stress-ng on {name}"),
            Path::new("/bin/sh"),
            &args,
            &log,
        )?;
        group.adopt(child);
    }
    Ok(in_cgroups)
}

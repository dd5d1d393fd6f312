//! The shipped D-Bus policy on a private *system-type* bus, with the real precogd as root:
//! a member of the reading group may call Status, Stats, Pools and read properties, but is
//! refused SetPolicy, Reload and FlushCache; a user outside the group is refused even Status;
//! nobody but root may own the name. The policy's group `precog` is rewritten to a temporary
//! group made for the test (with `nobody` in it) and deleted afterwards. Needs root, groupadd,
//! setpriv, dbus-daemon, busctl and python3, else prints `SKIPPED: <reason>`.

#[path = "dbus_harness.rs"]
mod harness;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use harness::{Daemon, PrivateBus, busctl, missing_tool, wait_for_name};
use serde_json::{Value, json};

const OBJECT: &str = "/org/precog/Precog1";
const NAME: &str = "org.precog.Precog1";
const POLICY: &str = include_str!("../packaging/dbus/org.precog.Precog1.conf");

/// A group made for this test, deleted when dropped.
struct TempGroup {
    name: String,
    gid: u32,
}

impl TempGroup {
    fn create(member: &str) -> Result<TempGroup, String> {
        let name = format!("precogt{}", std::process::id());
        let out = Command::new("groupadd")
            .args(["--users", member, &name])
            .output()
            .map_err(|e| format!("groupadd cannot run: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "groupadd failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let gid = nix::unistd::Group::from_name(&name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw());
        // Made before the lookup so that the group is deleted even when the lookup fails.
        let mut group = TempGroup { name, gid: 0 };
        group.gid = gid.ok_or("the new group cannot be looked up")?;
        Ok(group)
    }
}

impl Drop for TempGroup {
    fn drop(&mut self) {
        if !self.name.is_empty() {
            let _ = Command::new("groupdel").arg(&self.name).status();
        }
    }
}

/// A system-type bus configuration like Debian's system.conf (deny by default), listening in
/// `dir`, that includes our policy file rewritten to `group`.
fn system_bus_config(dir: &std::path::Path, group: &str) -> std::path::PathBuf {
    let policy = dir.join("org.precog.Precog1.conf");
    let rewritten = POLICY.replace("group=\"precog\"", &format!("group=\"{group}\""));
    assert_ne!(rewritten, POLICY, "the policy names the group precog");
    std::fs::write(&policy, rewritten).unwrap();
    let config = dir.join("system.conf");
    let text = format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={dir}/system_bus_socket</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
  </policy>
  <include>{policy}</include>
</busconfig>
"#,
        dir = dir.display(),
        policy = policy.display()
    );
    std::fs::write(&config, text).unwrap();
    config
}

fn precondition() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root to run precogd as the bus name's owner and to add a group".into());
    }
    for tool in ["groupadd", "groupdel", "setpriv"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    missing_tool()
}

fn denied(result: &(bool, String, String)) -> bool {
    !result.0 && result.2.contains("Access denied")
}

#[test]
fn readers_read_and_only_root_changes() {
    if let Some(why) = precondition() {
        println!("SKIPPED: {why}");
        return;
    }
    let group = match TempGroup::create("nobody") {
        Ok(g) => g,
        Err(why) => {
            println!("SKIPPED: cannot create a temporary group: {why}");
            return;
        }
    };
    let bus_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(bus_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bus = PrivateBus::start(Some(&system_bus_config(bus_dir.path(), &group.name)));
    let daemon = Daemon::start(&bus.address);
    wait_for_name(&bus.address);

    let member_groups = format!("--groups={}", group.gid);
    let member: &[&str] = &["--reuid=65534", "--regid=65534", &member_groups, "--"];
    let outsider: &[&str] = &["--reuid=1", "--regid=1", "--clear-groups", "--"];
    let call = |who: Option<&[&str]>, args: &[&str]| {
        let mut all = vec!["call", NAME, OBJECT, NAME];
        all.extend_from_slice(args);
        busctl(&bus.address, who, &all)
    };

    // A member of the group reads.
    for method in ["Status", "Stats", "Pools"] {
        let r = call(Some(member), &[method]);
        assert!(r.0, "{method} refused to a group member: {}", r.2);
    }
    let r = busctl(
        &bus.address,
        Some(member),
        &["get-property", NAME, OBJECT, NAME, "HitRatio", "Version"],
    );
    assert!(r.0, "properties refused to a group member: {}", r.2);
    assert!(r.1.contains(env!("CARGO_PKG_VERSION")), "{}", r.1);
    let r = busctl(&bus.address, Some(member), &["introspect", NAME, OBJECT]);
    assert!(r.0, "introspection refused to a group member: {}", r.2);

    // ... but changes nothing.
    let policy_before = daemon.call(json!({"op": "stats"}))["policy"].clone();
    let r = call(
        Some(member),
        &["SetPolicy", "a{sv}", "1", "threshold", "d", "0.9"],
    );
    assert!(denied(&r), "SetPolicy not refused: {r:?}");
    for method in ["Reload", "FlushCache"] {
        let r = call(Some(member), &[method]);
        assert!(denied(&r), "{method} not refused: {r:?}");
    }
    let r = call(
        Some(member),
        &["SetPoolLimits", "sa{ss}", "shop", "1", "workers_max", "1"],
    );
    assert!(denied(&r), "SetPoolLimits not refused: {r:?}");
    let stats: Value = daemon.call(json!({"op": "stats"}));
    assert_eq!(
        stats["policy"], policy_before,
        "a refused SetPolicy changed the policy"
    );
    assert_eq!(stats["pools"]["shop"]["workers_max"], 2);

    // Outside the group, not even reading.
    let r = call(Some(outsider), &["Status"]);
    assert!(denied(&r), "Status not refused to a non-member: {r:?}");

    // Nobody but root may own the name.
    let r = busctl(
        &bus.address,
        Some(member),
        &[
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "RequestName",
            "su",
            NAME,
            "0",
        ],
    );
    assert!(denied(&r), "a group member could own the name: {r:?}");

    // Root changes.
    let r = call(None, &["SetPolicy", "a{sv}", "1", "threshold", "d", "0.9"]);
    assert!(r.0, "root refused SetPolicy: {}", r.2);
    let stats: Value = daemon.call(json!({"op": "stats"}));
    assert_eq!(stats["policy"]["threshold"], 0.9);
}

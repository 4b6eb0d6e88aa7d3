//! `--cgroup file=value` on cgroup v1 or v2, as upstream's jailer does it: the hierarchies
//! come from `/proc/mounts`, the microVM's cgroup is `<hierarchy>/<parent-cgroup>/<id>`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Component, Path, PathBuf};

use crate::error::JailerError;

pub(crate) const PROC_MOUNTS: &str = "/proc/mounts";

fn write_line(path: &Path, value: &str) -> Result<(), JailerError> {
    std::fs::write(path, format!("{value}\n")).map_err(|e| JailerError::Write(path.into(), e))
}

fn read_line(path: &Path) -> Result<String, JailerError> {
    let mut line =
        std::fs::read_to_string(path).map_err(|e| JailerError::ReadToString(path.into(), e))?;
    line.pop();
    Ok(line)
}

/// A relative path with no `.`, `..` or root component.
pub(crate) fn is_plain_relative(path: &Path) -> bool {
    !path.components().any(|c| {
        matches!(
            c,
            Component::CurDir | Component::ParentDir | Component::RootDir
        )
    })
}

/// The cgroup mounts of one version, read from a `/proc/mounts`-shaped file.
struct Hierarchies {
    version: u8,
    /// v2: the unified mount; v1: each mount with its options.
    mounts: Vec<(PathBuf, String)>,
}

impl Hierarchies {
    fn read(version: u8, proc_mounts: &Path) -> Result<Self, JailerError> {
        let text = std::fs::read_to_string(proc_mounts)
            .map_err(|e| JailerError::FileOpen(proc_mounts.into(), e))?;
        let mut mounts = Vec::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let [_, dir, fstype, options, ..] = fields[..] else {
                continue;
            };
            match (version, fstype) {
                (2, "cgroup2") => {
                    mounts.push((PathBuf::from(dir), String::new()));
                    break;
                }
                (1, "cgroup") => mounts.push((PathBuf::from(dir), options.to_string())),
                _ => {}
            }
        }
        if mounts.is_empty() {
            return Err(JailerError::CgroupHierarchyMissing(
                "No hierarchy found for this cgroup version.".into(),
            ));
        }
        Ok(Self { version, mounts })
    }

    fn unified(&self) -> Result<&Path, JailerError> {
        match self.version {
            2 => Ok(&self.mounts[0].0),
            _ => Err(JailerError::CgroupHierarchyMissing(
                "cgroupsv2 hierarchy missing".into(),
            )),
        }
    }

    fn v1_controller(&self, controller: &str) -> Result<&Path, JailerError> {
        self.mounts
            .iter()
            .find(|(_, options)| options.split(',').any(|o| o == controller))
            .map(|(dir, _)| dir.as_path())
            .ok_or_else(|| JailerError::CgroupControllerUnavailable(controller.into()))
    }
}

fn controller_of(file: &str) -> Result<&str, JailerError> {
    match file.split_once('.') {
        Some((controller, _)) => Ok(controller),
        None => Err(JailerError::CgroupInvalidFile(file.into())),
    }
}

/// The cgroups to create and the values to write, validated before anything is touched.
#[derive(Debug)]
pub(crate) struct CgroupPlan {
    version: u8,
    /// cgroup directory → (file, value) in the order given.
    groups: BTreeMap<PathBuf, Vec<(String, String)>>,
    /// v1: how many levels `--parent-cgroup` has (how far up values may be inherited).
    parent_depth: usize,
}

pub(crate) fn parse_version(raw: &str) -> Result<u8, JailerError> {
    raw.parse::<u8>()
        .map_err(|_| JailerError::CgroupInvalidVersion(raw.into()))
}

/// With no `--cgroup` on v2, upstream moves the jailer into an existing `--parent-cgroup`.
pub(crate) fn move_into_existing_parent(
    parent: &Path,
    proc_mounts: &Path,
) -> Result<(), JailerError> {
    let hierarchies = Hierarchies::read(2, proc_mounts)?;
    let target = hierarchies.unified()?.join(parent);
    if target.exists() {
        std::fs::write(target.join("cgroup.procs"), std::process::id().to_string())
            .map_err(|e| JailerError::CgroupMove(target.clone(), e))?;
    }
    Ok(())
}

pub(crate) fn plan(
    version: u8,
    properties: &[String],
    id: &str,
    parent: &Path,
    proc_mounts: &Path,
) -> Result<CgroupPlan, JailerError> {
    let hierarchies = Hierarchies::read(version, proc_mounts)?;
    if version != 1 && version != 2 {
        return Err(JailerError::CgroupInvalidVersion(version.to_string()));
    }
    let available: HashSet<String> = match version {
        2 => std::fs::read_to_string(hierarchies.unified()?.join("cgroup.controllers"))
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect(),
        _ => HashSet::new(),
    };
    let mut groups: BTreeMap<PathBuf, Vec<(String, String)>> = BTreeMap::new();
    for property in properties {
        let parts: Vec<&str> = property.split('=').collect();
        if parts.len() != 2 || parts[1].is_empty() {
            return Err(JailerError::CgroupFormat(property.clone()));
        }
        let (file, value) = (parts[0], parts[1]);
        if !is_plain_relative(Path::new(file)) {
            return Err(JailerError::CgroupInvalidFile(property.clone()));
        }
        let controller = controller_of(file)?;
        let base = match version {
            1 => hierarchies.v1_controller(controller)?,
            _ => {
                if !available.contains(controller) {
                    return Err(JailerError::CgroupControllerUnavailable(controller.into()));
                }
                hierarchies.unified()?
            }
        };
        groups
            .entry(base.join(parent).join(id))
            .or_default()
            .push((file.to_string(), value.to_string()));
    }
    Ok(CgroupPlan {
        version,
        groups,
        parent_depth: parent.components().count(),
    })
}

impl CgroupPlan {
    /// Creates the cgroups, writes the values, then moves this process in.
    pub(crate) fn apply(&self) -> Result<(), JailerError> {
        for (dir, properties) in &self.groups {
            std::fs::create_dir_all(dir).map_err(|e| JailerError::CreateDir(dir.clone(), e))?;
            let mut enabled = HashSet::new();
            for (file, value) in properties {
                match self.version {
                    1 => inherit_from_parent(dir, file, self.parent_depth)?,
                    _ => {
                        let controller = controller_of(file)?;
                        if enabled.insert(controller.to_string())
                            && let Some(parent) = dir.parent()
                        {
                            enable_in_subtree(parent, controller)?;
                        }
                    }
                }
                write_line(&dir.join(file), value)?;
            }
        }
        let pid = std::process::id().to_string();
        for dir in self.groups.keys() {
            let file = if self.version == 1 {
                "tasks"
            } else {
                "cgroup.procs"
            };
            write_line(&dir.join(file), &pid)?;
        }
        Ok(())
    }
}

/// v1 (cpuset notably) starts a new cgroup with empty values: take the nearest non-empty
/// ancestor's, as upstream does.
fn inherit_from_parent(dir: &Path, file: &str, depth: usize) -> Result<(), JailerError> {
    let parent_file = dir.with_file_name(file);
    let mut line = read_line(&parent_file)?;
    if line.is_empty() {
        if depth > 0 {
            if let Some(parent) = parent_file.parent() {
                let _ = inherit_from_parent(parent, file, depth - 1);
            }
            line = read_line(&parent_file)?;
        }
        if line.is_empty() {
            return Err(JailerError::CgroupInheritFromParent(
                dir.into(),
                file.into(),
            ));
        }
    }
    write_line(&dir.join(file), &line)
}

/// v2: a controller must be enabled in every ancestor's `cgroup.subtree_control`.
fn enable_in_subtree(dir: &Path, controller: &str) -> Result<(), JailerError> {
    let control = dir.join("cgroup.subtree_control");
    if !control.exists() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        enable_in_subtree(parent, controller)?;
    }
    write_line(&control, &format!("+{controller}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("mounts");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn v1_controllers_and_formats() {
        let dir = tempfile::tempdir().unwrap();
        let m = mounts(
            dir.path(),
            "cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0\n\
             cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n",
        );
        let plan = plan(
            1,
            &["cpuset.mems=0".into(), "cpu.shares=10".into()],
            "vm1",
            Path::new("squib"),
            &m,
        )
        .unwrap();
        assert!(
            plan.groups
                .contains_key(Path::new("/sys/fs/cgroup/cpuset/squib/vm1"))
        );
        let err = |p: &str| plan_err(1, p, &m);
        assert_eq!(
            err("cpuset.mems"),
            "Invalid format for cgroups: cpuset.mems"
        );
        assert_eq!(err("a=b=c"), "Invalid format for cgroups: a=b=c");
        assert_eq!(err("../x.y=1"), "Cgroup invalid file: ../x.y=1");
        assert_eq!(err("memory.max=1"), "Controller memory is unavailable");
        assert_eq!(
            plan_err(2, "cpu.max=1", &m),
            "Hierarchy not found: No hierarchy found for this cgroup version."
        );
        assert_eq!(
            parse_version("x").unwrap_err().to_string(),
            "x is an invalid cgroup version specifier"
        );
    }

    fn plan_err(version: u8, property: &str, m: &Path) -> String {
        plan(version, &[property.into()], "vm1", Path::new("squib"), m)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn parent_cgroup_must_be_plain() {
        assert!(is_plain_relative(Path::new("a/b")));
        assert!(!is_plain_relative(Path::new("/a")));
        assert!(!is_plain_relative(Path::new("a/../b")));
    }
}

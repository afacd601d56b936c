//! Which properties of each cgroup controller a dump records: CRIU's table (criu/cgroup-props.c)
//! with `--cgroup-props TEXT` and `--cgroup-props-file FILE` applied in that order.
//!
//! ```text
//!  "cpu":                                      one block per controller; "strategy" is
//!   - "strategy": "replace"                    "replace" (the list given is the list) or
//!   - "properties": ["cpu.shares", "cpu.cfs_period_us"]   "merge" (added to the list so far)
//!  "memory":
//!   - "strategy": "merge"
//!   - "properties": []
//! ```
//! The global files (`cgroup.clone_children`, `notify_on_release`, `cgroup.procs`, `tasks`;
//! on the unified hierarchy `cgroup.subtree_control`, `cgroup.max.descendants`,
//! `cgroup.max.depth`, `cgroup.type`, `cgroup.procs`) are always recorded, as CRIU does. The unified (v2)
//! hierarchy, whose controller field is empty, is listed under `"unified"` (a stasis
//! addition: CRIU records no controller property there).

/// Properties by controller name, in the order they were given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Props {
    by_name: Vec<(String, Vec<String>)>,
}

/// The name the unified hierarchy's list goes by.
pub const UNIFIED: &str = "unified";

/// Global files of a v1 hierarchy (CRIU's `cgp_global`).
pub const GLOBAL_V1: &[&str] = &[
    "cgroup.clone_children",
    "notify_on_release",
    "cgroup.procs",
    "tasks",
];

/// Global files of the unified hierarchy (CRIU's `cgp_global_v2` but `cgroup.freeze`: the
/// dump itself may freeze the cgroup; and `cgroup.procs`, whose permissions the restore
/// gives back).
pub const GLOBAL_V2: &[&str] = &[
    "cgroup.subtree_control",
    "cgroup.max.descendants",
    "cgroup.max.depth",
    "cgroup.type",
    "cgroup.procs",
];

/// CRIU's built-in table, then the unified hierarchy's controller limits.
const BUILTIN: &[(&str, &[&str])] = &[
    (
        "cpu",
        &[
            "cpu.shares",
            "cpu.cfs_period_us",
            "cpu.cfs_quota_us",
            "cpu.rt_period_us",
            "cpu.rt_runtime_us",
        ],
    ),
    (
        "memory",
        &[
            "memory.limit_in_bytes",
            "memory.memsw.limit_in_bytes",
            "memory.swappiness",
            "memory.soft_limit_in_bytes",
            "memory.move_charge_at_immigrate",
            "memory.oom_control",
            "memory.use_hierarchy",
            "memory.kmem.limit_in_bytes",
            "memory.kmem.tcp.limit_in_bytes",
        ],
    ),
    (
        "cpuset",
        &[
            "cpuset.cpus",
            "cpuset.mems",
            "cpuset.memory_migrate",
            "cpuset.cpu_exclusive",
            "cpuset.mem_exclusive",
            "cpuset.mem_hardwall",
            "cpuset.memory_spread_page",
            "cpuset.memory_spread_slab",
            "cpuset.sched_load_balance",
            "cpuset.sched_relax_domain_level",
        ],
    ),
    ("blkio", &["blkio.weight"]),
    ("freezer", &[]),
    ("perf_event", &[]),
    ("net_cls", &["net_cls.classid"]),
    ("net_prio", &["net_prio.ifpriomap"]),
    ("pids", &["pids.max"]),
    ("devices", &["devices.list"]),
    (
        UNIFIED,
        &[
            "cpu.weight",
            "cpu.max",
            "cpuset.cpus",
            "cpuset.mems",
            "io.weight",
            "memory.min",
            "memory.low",
            "memory.high",
            "memory.max",
            "memory.swap.max",
            "pids.max",
        ],
    ),
];

impl Default for Props {
    fn default() -> Props {
        Props {
            by_name: BUILTIN
                .iter()
                .map(|(n, p)| (n.to_string(), p.iter().map(|s| s.to_string()).collect()))
                .collect(),
        }
    }
}

/// A parser over CRIU's format: quoted words, a few punctuation marks, spaces skipped where
/// CRIU skips them (never newlines).
struct Cursor<'a> {
    s: &'a str,
}

impl<'a> Cursor<'a> {
    fn spaces(&mut self) {
        self.s = self.s.trim_start_matches(' ');
    }

    fn eat(&mut self, lit: &str) -> bool {
        self.spaces();
        match self.s.strip_prefix(lit) {
            Some(rest) => {
                self.s = rest;
                true
            }
            None => false,
        }
    }

    /// A non-empty quoted word.
    fn quoted(&mut self) -> Option<&'a str> {
        self.spaces();
        let rest = self.s.strip_prefix('"')?;
        let end = rest.find('"').filter(|&e| e > 0)?;
        self.s = &rest[end + 1..];
        Some(&rest[..end])
    }
}

impl Props {
    /// The built-in table with `--cgroup-props` `text` and then `--cgroup-props-file` `file`
    /// applied.
    pub fn from_options(
        text: Option<&str>,
        file: Option<&std::path::Path>,
    ) -> Result<Props, String> {
        let mut p = Props::default();
        if let Some(t) = text {
            p.apply(t).map_err(|e| format!("--cgroup-props: {e}"))?;
        }
        if let Some(f) = file {
            let t = std::fs::read_to_string(f)
                .map_err(|e| format!("--cgroup-props-file {}: {e}", f.display()))?;
            p.apply(&t)
                .map_err(|e| format!("--cgroup-props-file {}: {e}", f.display()))?;
        }
        Ok(p)
    }

    /// Applies one text in CRIU's format (see the module documentation).
    pub fn apply(&mut self, text: &str) -> Result<(), String> {
        let mut c = Cursor { s: text };
        while !c.s.is_empty() {
            let name = c.quoted().ok_or("expecting a quoted controller name")?;
            let what = |w: &str| format!("controller {name:?}: expected {w}");
            if !(c.eat(":") && c.eat("\n") && c.eat("-")) {
                return Err(what("':' newline '-'"));
            }
            if !c.eat("\"strategy\":") {
                return Err(what("\"strategy\":"));
            }
            let merge = match c.quoted() {
                Some("merge") => true,
                Some("replace") => false,
                Some(s) => return Err(format!("controller {name:?}: unknown strategy {s:?}")),
                None => return Err(what("a quoted strategy")),
            };
            if !(c.eat("\n") && c.eat("-") && c.eat("\"properties\":") && c.eat("[")) {
                return Err(what("newline '- \"properties\": ['"));
            }
            let mut props = Vec::new();
            if !c.eat("]") {
                loop {
                    let p = c.quoted().ok_or_else(|| what("a quoted property name"))?;
                    props.push(p.to_string());
                    if c.eat("]") {
                        break;
                    }
                    if !c.eat(",") {
                        return Err(what("',' or ']'"));
                    }
                }
            }
            if !c.eat("\n") && !c.s.is_empty() {
                return Err(what("a newline after ']'"));
            }
            match self.by_name.iter_mut().find(|(n, _)| n == name) {
                Some((_, list)) if merge => list.extend(props),
                Some((_, list)) => *list = props,
                None => self.by_name.push((name.to_string(), props)),
            }
        }
        Ok(())
    }

    /// The properties recorded for controller `name` (`""`: the unified hierarchy's), the
    /// global files not included.
    pub fn of(&self, name: &str) -> &[String] {
        let name = if name.is_empty() { UNIFIED } else { name };
        self.by_name
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.as_slice())
            .unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criu_format_replace_and_merge() {
        let mut p = Props::default();
        assert_eq!(p.of("pids"), ["pids.max"]);
        p.apply(
            "\"cpu\":\n - \"strategy\": \"replace\"\n - \"properties\": [\"cpu.shares\"]\n\
             \"pids\":\n - \"strategy\": \"merge\"\n - \"properties\": [ \"pids.current\" , \"x\" ]\n\
             \"unified\":\n - \"strategy\": \"replace\"\n - \"properties\": []\n\
             \"new\":\n - \"strategy\": \"merge\"\n - \"properties\": [\"new.a\"]",
        )
        .unwrap();
        assert_eq!(p.of("cpu"), ["cpu.shares"]);
        assert_eq!(p.of("pids"), ["pids.max", "pids.current", "x"]);
        assert!(p.of("").is_empty());
        assert_eq!(p.of("new"), ["new.a"]);
        assert!(p.of("nothing").is_empty());
    }

    #[test]
    fn errors_name_the_controller() {
        let mut p = Props::default();
        let e = p
            .apply("\"cpu\":\n - \"strategy\": \"sometimes\"\n - \"properties\": []\n")
            .unwrap_err();
        assert!(e.contains("\"cpu\"") && e.contains("sometimes"), "{e}");
        let e = p
            .apply("\"cpu\":\n - \"strategy\": \"merge\"\n - \"properties\": [\"a\" \"b\"]\n")
            .unwrap_err();
        assert!(e.contains("',' or ']'"), "{e}");
        assert!(p.apply("cpu:\n").is_err());
        assert!(p.apply("\"\":\n").is_err());
        let e = Props::from_options(None, Some(std::path::Path::new("/nonexistent/props")))
            .unwrap_err();
        assert!(e.contains("--cgroup-props-file /nonexistent/props"), "{e}");
    }
}

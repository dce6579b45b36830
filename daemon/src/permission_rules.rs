//! Permission rules as matchers: the bash prefix rule (shared by `[permissions] allow_bash` and
//! saved rules), which tools an "always allow" answer may save a rule for, what its pattern may
//! be (checked when the answer arrives, so a bad pattern is the answering client's error and
//! nothing is saved), the pattern a prompt suggests, and whether a saved rule allows a call. Pure
//! functions: the rules themselves live in the store and, for matching without a database read
//! per tool call, in `runs/permissions.rs`'s memory.

use globset::{Glob, GlobBuilder, GlobMatcher};

use crush_protocol::{PermissionRule, RuleScope};

/// The allow rule a bash command matches, if any: the rule's words are the command's first
/// words, and the command has no shell syntax that could chain another command after an
/// allowed one.
pub fn bash_rule<'a>(rules: &'a [String], command: &str) -> Option<&'a String> {
    const CONTROL: &[&str] = &[";", "&", "|", "`", "$(", ">", "<", "\n", "\r"];
    if CONTROL.iter().any(|c| command.contains(c)) {
        return None;
    }
    let words: Vec<&str> = command.split_whitespace().collect();
    rules.iter().find(|rule| {
        let want: Vec<&str> = rule.split_whitespace().collect();
        !want.is_empty() && words.len() >= want.len() && words[..want.len()] == want[..]
    })
}

/// Whether a bash command matches an allow rule (see [`bash_rule`]).
pub fn bash_allowed(rules: &[String], command: &str) -> bool {
    bash_rule(rules, command).is_some()
}

/// What a rule of a tool matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `bash`: a command prefix of whole words; no chained commands.
    Command,
    /// `write`, `edit`: a path glob relative to the workspace root.
    Path,
    /// MCP tools (`mcp__server__tool`): the tool name alone.
    Whole,
}

fn kind(tool: &str) -> Option<Kind> {
    match tool {
        "bash" => Some(Kind::Command),
        "write" | "edit" => Some(Kind::Path),
        t if crate::mcp::split_name(t).is_some() => Some(Kind::Whole),
        _ => None,
    }
}

/// What a call would do, as rules see it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Subject<'a> {
    /// `bash`'s command.
    pub command: Option<&'a str>,
    /// A file tool's path relative to the workspace root, as resolved.
    pub path: Option<&'a str>,
}

/// A `Subject` that owns its strings, kept with a prompt while it waits: a rule saved meanwhile
/// by an answer to another prompt may allow it.
#[derive(Debug, Clone, Default)]
pub struct OwnedSubject {
    pub command: Option<String>,
    pub path: Option<String>,
}

impl OwnedSubject {
    pub fn borrow(&self) -> Subject<'_> {
        Subject {
            command: self.command.as_deref(),
            path: self.path.as_deref(),
        }
    }
}

impl From<Subject<'_>> for OwnedSubject {
    fn from(s: Subject<'_>) -> Self {
        Self {
            command: s.command.map(str::to_owned),
            path: s.path.map(str::to_owned),
        }
    }
}

/// The scopes a prompt for `tool` offers for `allowAlways`: none for prompts that cannot be
/// saved as a rule (an MCP server's start, the sandbox's escalations).
pub fn scopes(tool: &str) -> Vec<RuleScope> {
    match kind(tool) {
        Some(_) => RuleScope::ALL.to_vec(),
        None => Vec::new(),
    }
}

/// The pattern a prompt suggests: the command's first word (and its second, when that is a
/// subcommand rather than an option or a path: `cargo test`, `git status`), or every file in
/// the directory of the file (`src/**`).
pub fn suggested_pattern(tool: &str, subject: Subject<'_>) -> Option<String> {
    match kind(tool)? {
        Kind::Command => {
            let mut words = subject.command?.split_whitespace();
            let first = words.next()?;
            Some(match words.next() {
                Some(w)
                    if w.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                        && !w.starts_with('-') =>
                {
                    format!("{first} {w}")
                }
                _ => first.to_owned(),
            })
        }
        Kind::Path => {
            let path = subject.path?;
            Some(match path.rsplit_once('/') {
                Some((dir, _)) => format!("{}/**", globset::escape(dir)),
                None => "**".to_owned(),
            })
        }
        Kind::Whole => None,
    }
}

/// Checks and normalizes the pattern of a rule an answer would save. `Err` says what is wrong,
/// for the answering client.
pub fn normalize(tool: &str, pattern: Option<&str>) -> Result<Option<String>, String> {
    let pattern = pattern.map(str::trim).filter(|p| !p.is_empty());
    match kind(tool) {
        None => Err(format!(
            "a prompt for {tool:?} cannot be saved as a rule; answer allow, allowSession or deny"
        )),
        Some(Kind::Whole) => match pattern {
            None => Ok(None),
            Some(_) => Err(format!(
                "a rule for {tool:?} takes no pattern: it allows every call of the tool"
            )),
        },
        Some(Kind::Command) => {
            let p = pattern.ok_or("a bash rule needs a command prefix (pattern)")?;
            let words: Vec<&str> = p.split_whitespace().collect();
            let p = words.join(" ");
            if !bash_allowed(std::slice::from_ref(&p), &p) {
                return Err(format!(
                    "the command prefix {p:?} has shell syntax (; & | ` $( < > or a line break); give plain words"
                ));
            }
            Ok(Some(p))
        }
        Some(Kind::Path) => {
            let p = pattern.ok_or("a file rule needs a path glob (pattern)")?;
            if p.starts_with('/') || p.split('/').any(|c| c == "..") {
                return Err(format!(
                    "the path glob {p:?} must be relative to the workspace, without `..`"
                ));
            }
            glob(p).map_err(|e| format!("the path glob {p:?} is not a glob: {e}"))?;
            Ok(Some(p.to_owned()))
        }
    }
}

/// `*` stays within one path component; `**` crosses them.
fn glob(pattern: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(pattern).literal_separator(true).build()
}

/// A saved rule ready for matching (its glob compiled once).
#[derive(Debug, Clone)]
pub struct LiveRule {
    pub rule: PermissionRule,
    glob: Option<GlobMatcher>,
}

impl LiveRule {
    pub fn new(rule: PermissionRule) -> Self {
        let glob = match (kind(&rule.tool), &rule.pattern) {
            (Some(Kind::Path), Some(p)) => glob(p).ok().map(|g| g.compile_matcher()),
            _ => None,
        };
        Self { rule, glob }
    }

    /// Whether the rule allows a call of `tool` in the session `session_id` of the workspace
    /// `workspace_id`. A rule whose pattern no longer compiles, or that lacks the pattern its
    /// tool needs, allows nothing.
    pub fn allows(
        &self,
        session_id: &str,
        workspace_id: &str,
        tool: &str,
        subject: Subject<'_>,
    ) -> bool {
        let r = &self.rule;
        let in_scope = match r.scope {
            RuleScope::Global => true,
            RuleScope::Workspace => r.workspace_id.as_deref() == Some(workspace_id),
            RuleScope::Session => r.session_id.as_deref() == Some(session_id),
        };
        if !in_scope || r.tool != tool {
            return false;
        }
        match (kind(tool), &r.pattern) {
            (Some(Kind::Whole), None) => true,
            (Some(Kind::Command), Some(p)) => subject
                .command
                .is_some_and(|c| bash_allowed(std::slice::from_ref(p), c)),
            (Some(Kind::Path), Some(_)) => match (&self.glob, subject.path) {
                (Some(g), Some(path)) => g.is_match(path),
                _ => false,
            },
            _ => false,
        }
    }

    /// The rule for a person: `bash "cargo test"`, `edit "src/**"`, `mcp__fs__read`.
    pub fn describe(&self) -> String {
        describe(&self.rule)
    }
}

pub fn describe(r: &PermissionRule) -> String {
    match &r.pattern {
        Some(p) => format!("{} {:?} ({})", r.tool, p, r.scope),
        None => format!("{} ({})", r.tool, r.scope),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(scope: RuleScope, tool: &str, pattern: Option<&str>) -> LiveRule {
        LiveRule::new(PermissionRule {
            id: "r".into(),
            scope,
            workspace_id: (scope != RuleScope::Global).then(|| "w".to_owned()),
            session_id: (scope == RuleScope::Session).then(|| "s".to_owned()),
            tool: tool.into(),
            pattern: pattern.map(str::to_owned),
            created_at: 0,
            created_by: "test".into(),
        })
    }

    fn cmd(c: &str) -> Subject<'_> {
        Subject {
            command: Some(c),
            path: None,
        }
    }

    fn path(p: &str) -> Subject<'_> {
        Subject {
            command: None,
            path: Some(p),
        }
    }

    #[test]
    fn a_bash_prefix_matches_whole_words_and_never_a_chained_command() {
        let r = rule(RuleScope::Global, "bash", Some("ls"));
        assert!(r.allows("s", "w", "bash", cmd("ls")));
        assert!(r.allows("s", "w", "bash", cmd("ls -la src")));
        assert!(!r.allows("s", "w", "bash", cmd("lsblk")));
        for chained in [
            "ls; rm -rf x",
            "ls && rm -rf x",
            "ls | sh",
            "ls `rm x`",
            "ls $(rm x)",
            "ls > f",
            "ls\nrm x",
        ] {
            assert!(!r.allows("s", "w", "bash", cmd(chained)), "{chained}");
        }
        let r = rule(RuleScope::Global, "bash", Some("cargo test"));
        assert!(r.allows("s", "w", "bash", cmd("cargo  test -p x")));
        assert!(!r.allows("s", "w", "bash", cmd("cargo build")));
        assert!(!r.allows("s", "w", "edit", cmd("cargo test")));
    }

    #[test]
    fn a_path_glob_matches_only_inside_it() {
        let r = rule(RuleScope::Workspace, "edit", Some("src/**"));
        assert!(r.allows("s", "w", "edit", path("src/main.rs")));
        assert!(r.allows("s", "w", "edit", path("src/a/b.rs")));
        assert!(!r.allows("s", "w", "edit", path("main.rs")));
        assert!(!r.allows("s", "w", "edit", path("srcx/main.rs")));
        assert!(!r.allows("s", "w", "write", path("src/main.rs")));
        assert!(!r.allows("s", "other", "edit", path("src/main.rs")));
        let r = rule(RuleScope::Global, "write", Some("src/*.rs"));
        assert!(r.allows("s", "w", "write", path("src/x.rs")));
        assert!(!r.allows("s", "w", "write", path("src/a/x.rs")));
    }

    #[test]
    fn scopes_limit_where_a_rule_applies() {
        let r = rule(RuleScope::Session, "mcp__fs__read", None);
        assert!(r.allows("s", "w", "mcp__fs__read", Subject::default()));
        assert!(!r.allows("s2", "w", "mcp__fs__read", Subject::default()));
        assert!(!r.allows("s", "w", "mcp__fs__write", Subject::default()));
    }

    #[test]
    fn patterns_are_checked_before_anything_is_saved() {
        assert_eq!(
            normalize("bash", Some(" cargo   test ")),
            Ok(Some("cargo test".into()))
        );
        assert!(normalize("bash", Some("ls; rm")).is_err());
        assert!(normalize("bash", None).is_err());
        assert!(normalize("edit", Some("../x/**")).is_err());
        assert!(normalize("edit", Some("/etc/**")).is_err());
        assert!(normalize("edit", Some("src/[")).is_err());
        assert_eq!(normalize("edit", Some("src/**")), Ok(Some("src/**".into())));
        assert_eq!(normalize("mcp__fs__read", None), Ok(None));
        assert!(normalize("mcp__fs__read", Some("x")).is_err());
        assert!(normalize("mcp", None).is_err());
        assert!(scopes("mcp").is_empty());
        assert_eq!(scopes("bash").len(), 3);
    }

    #[test]
    fn prompts_suggest_a_useful_pattern() {
        assert_eq!(
            suggested_pattern("bash", cmd("cargo test -p x")),
            Some("cargo test".into())
        );
        assert_eq!(suggested_pattern("bash", cmd("ls -la")), Some("ls".into()));
        assert_eq!(
            suggested_pattern("bash", cmd("cat src/main.rs")),
            Some("cat".into())
        );
        assert_eq!(
            suggested_pattern("edit", path("src/a.rs")),
            Some("src/**".into())
        );
        assert_eq!(suggested_pattern("write", path("a.rs")), Some("**".into()));
        assert_eq!(suggested_pattern("mcp__fs__read", Subject::default()), None);
    }
}

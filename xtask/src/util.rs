//! Helpers shared by the xtask commands: locating the workspace, running commands with a header,
//! and checking for root.

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// The workspace root. `cargo run` (which `cargo xtask` is) sets CARGO_MANIFEST_DIR at run time
/// too; prefer that over the compile-time value so a shared CARGO_TARGET_DIR across clones at
/// different paths never points a cached xtask at an old checkout.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or(manifest_dir)
}

/// `cargo` through the rustup proxy, run from the workspace root so rust-toolchain.toml applies.
/// (Not `$CARGO`: that is the toolchain's cargo itself, which would skip rustup for `cargo clippy`
/// and `cargo fmt`.)
pub fn cargo(args: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args(args).current_dir(workspace_root());
    cmd
}

/// The cargo target directory, as cargo itself resolves it (CARGO_TARGET_DIR, `build.target-dir`
/// or `<workspace>/target`).
pub fn target_dir() -> anyhow::Result<PathBuf> {
    let json = output(cargo(&["metadata", "--format-version", "1", "--no-deps"]))?;
    let dir = json_string_field(&json, "target_directory")
        .context("`cargo metadata` printed no target_directory")?;
    Ok(PathBuf::from(dir))
}

/// The string value of the first `"key":"..."` in `json`. Enough for cargo metadata's top-level
/// paths without pulling a JSON crate into xtask.
fn json_string_field(json: &str, key: &str) -> Option<String> {
    let needle = format!("\"{key}\":");
    let rest = json[json.find(&needle)? + needle.len()..].trim_start();
    let mut chars = rest.strip_prefix('"')?.chars();
    let mut value = String::new();
    loop {
        match chars.next()? {
            '"' => return Some(value),
            '\\' => match chars.next()? {
                'n' => value.push('\n'),
                't' => value.push('\t'),
                'r' => value.push('\r'),
                'b' => value.push('\u{8}'),
                'f' => value.push('\u{c}'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    value.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                other => value.push(other), // \" \\ \/
            },
            c => value.push(c),
        }
    }
}

/// How a command reads in a header or an error: env assignments, program and arguments.
pub fn display(cmd: &Command) -> String {
    // Single quotes where the shell would split a word (good enough to read and copy).
    let quote = |s: std::borrow::Cow<'_, str>| {
        if s.is_empty() || s.contains(char::is_whitespace) {
            format!("'{s}'")
        } else {
            s.into_owned()
        }
    };
    // As env(1) takes them: removals (`-u NAME`) before assignments.
    let removed = cmd
        .get_envs()
        .filter(|(_, v)| v.is_none())
        .map(|(k, _)| format!("-u {}", k.to_string_lossy()));
    let set = cmd.get_envs().filter_map(|(k, v)| {
        Some(format!(
            "{}={}",
            k.to_string_lossy(),
            quote(v?.to_string_lossy())
        ))
    });
    let mut parts: Vec<String> = removed.chain(set).collect();
    if !parts.is_empty() {
        parts.insert(0, "env".to_owned());
    }
    parts.push(quote(cmd.get_program().to_string_lossy()));
    parts.extend(cmd.get_args().map(|a| quote(a.to_string_lossy())));
    parts.join(" ")
}

/// Runs `cmd` with inherited stdio and fails unless it exits 0.
pub fn run(mut cmd: Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{}`", display(&cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(&cmd));
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout; fails (with its stderr) unless it exits 0.
pub fn output(mut cmd: Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{}`", display(&cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            display(&cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{}`: non-UTF-8 output", display(&cmd)))
}

/// Whether `cmd` runs and exits 0, with all output discarded: for checks.
pub fn succeeds(mut cmd: Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `Command::new(program).args(args)`, for short call sites.
pub fn command<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd
}

/// Whether this process runs as root (effective uid 0): /proc/self belongs to the effective uid.
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The first `name` on PATH that is a file.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::json_string_field;

    #[test]
    fn reads_target_directory_from_cargo_metadata() {
        let json = r#"{"packages":[],"target_directory":"/tmp/a \"b\"\\c\u00e9","version":1}"#;
        assert_eq!(
            json_string_field(json, "target_directory").as_deref(),
            Some("/tmp/a \"b\"\\cé")
        );
        assert_eq!(json_string_field(json, "workspace_root"), None);
    }
}

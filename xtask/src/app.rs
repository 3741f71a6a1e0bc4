//! `cargo xtask run --app PATH`: a user's std crate as an rguest guest.
//!
//! The crate at PATH is built for `x86_64-unknown-hermit` against our
//! runtime (`images/std/hermit`) without touching a file of it, whichever
//! of the two kinds it is:
//!
//! - a **Hermit application**: its `Cargo.toml` has a dependency named
//!   `hermit` (ours, `package = "rguest-hermit"`, or the real Hermit
//!   kernel from crates.io) and its `main.rs` says `use hermit as _;`;
//! - a **plain std crate** written for Linux, with no `hermit` at all.
//!
//! How: a generated package in `target/hermit-apps/<name>/` stands in for
//! the user's. Its `Cargo.toml` is made from what `cargo metadata` says
//! about the user's package: the same name, version and edition, the
//! user's `src/main.rs` (and `build.rs`) by absolute path as its binary's
//! (and build script's) source, the user's dependencies and features as
//! they are, except that any `hermit` dependency is replaced by ours. The
//! user's `Cargo.lock` is copied beside it, so the same versions are
//! built. A plain crate never names `hermit` in its source, and rustc
//! links only the crates a crate uses, so the binary is built with
//! `cargo rustc ... -- -Zunstable-options --extern force:hermit`: the
//! `force` modifier (nightly, like the rest of this build) links the
//! crate as if the source said `use hermit as _;`. rustc merges it with
//! the `--extern hermit=...` cargo passes for the dependency, and it
//! applies to the user's binary alone, not to its dependencies.
//!
//! Not supported (each refused in one line): a package with a library
//! target as well (its binary would need that library built for the
//! guest too), several binaries without one named like the package, and
//! git dependencies.

use crate::std_guests::{self, BUILD_STD_ARGS};
use crate::workspace::Workspace;
use crate::{Error, Result};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A user's crate, built: its guest name and ELF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltApp {
    /// The binary's name: the archive entry and the name in `guests=`.
    pub name: String,
    /// The ELF.
    pub elf: PathBuf,
}

/// Builds the crate in `dir` for the guest target with our runtime linked.
pub fn build(workspace: &Workspace, dir: &Path) -> Result<BuiltApp> {
    let dir = std_guests::check_crate_dir(dir)?;
    std_guests::ensure_nightly()?;
    let metadata = metadata(workspace, &dir)?;
    let package = user_package(&metadata, &dir)?;
    let wrapper = Wrapper::from_package(package, &std_guests::runtime_dir(workspace))?;
    let wrapper_dir = app_dir(workspace, &wrapper.bin);
    write_wrapper(&wrapper, &wrapper_dir, &metadata)?;
    let mut cargo = std_guests::nightly_cargo(workspace);
    cargo
        .current_dir(&wrapper_dir)
        .arg("rustc")
        .args(BUILD_STD_ARGS)
        .args(["--bin", &wrapper.bin, "--"])
        .args(["-Zunstable-options", "--extern", "force:hermit"]);
    crate::artefacts::run_to_completion(
        &mut cargo,
        &format!("building {} for the guest target", dir.display()),
    )?;
    let elf = std_guests::elf_path(workspace, &wrapper.bin);
    if !elf.is_file() {
        return Err(Error::new(format!(
            "cargo built {} but {} is missing",
            dir.display(),
            elf.display()
        )));
    }
    Ok(BuiltApp {
        name: wrapper.bin,
        elf,
    })
}

/// Where the stand-in package (and the app's guest archive) of binary
/// `name` is made: `target/hermit-apps/<name>/`.
pub fn app_dir(workspace: &Workspace, name: &str) -> PathBuf {
    workspace.target_dir.join("hermit-apps").join(name)
}

/// `cargo metadata --no-deps` of the crate in `dir`, as JSON.
fn metadata(workspace: &Workspace, dir: &Path) -> Result<Value> {
    let mut cargo = std_guests::nightly_cargo(workspace);
    cargo
        .current_dir(dir)
        .args(["metadata", "--format-version", "1", "--no-deps"]);
    let output = cargo
        .output()
        .map_err(|e| Error::new(format!("cannot run cargo metadata: {e}")))?;
    if !output.status.success() {
        return Err(Error::new(format!(
            "cargo metadata in {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    serde_json::from_slice(&output.stdout)
        .map_err(|e| Error::new(format!("cargo metadata gave no JSON: {e}")))
}

/// The package whose manifest is `dir/Cargo.toml` (a workspace lists all
/// its members).
fn user_package<'a>(metadata: &'a Value, dir: &Path) -> Result<&'a Value> {
    let manifest = dir.join("Cargo.toml");
    metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["manifest_path"].as_str().map(Path::new) == Some(&manifest))
        .ok_or_else(|| {
            Error::new(format!(
                "--app {}: cargo metadata lists no package there",
                dir.display()
            ))
        })
}

/// The generated stand-in package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wrapper {
    /// The user's package name (so `CARGO_PKG_NAME` is unchanged).
    pub package: String,
    /// The user's version.
    pub version: String,
    /// The binary's edition.
    pub edition: String,
    /// The binary's name.
    pub bin: String,
    /// The binary's root source file.
    pub main: String,
    /// The build script, if any.
    pub build_script: Option<String>,
    /// The `[dependencies]`-style tables, each a header and its lines.
    pub dependencies: Vec<(String, String)>,
    /// The `[features]` lines.
    pub features: String,
}

impl Wrapper {
    /// Reads a package of `cargo metadata` into the stand-in, with
    /// `runtime` (the runtime's directory) as its `hermit`.
    pub fn from_package(package: &Value, runtime: &Path) -> Result<Self> {
        let name = text(&package["name"]);
        let targets: Vec<&Value> = package["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .collect();
        let has_kind = |t: &&Value, kind: &str| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == kind))
        };
        if targets
            .iter()
            .any(|t| has_kind(t, "lib") || has_kind(t, "rlib"))
        {
            return Err(Error::new(format!(
                "--app: package `{name}` has a library as well as a binary; --app builds \
                 a package whose code is all in its binary (src/main.rs and its modules)"
            )));
        }
        let bins: Vec<&&Value> = targets.iter().filter(|t| has_kind(t, "bin")).collect();
        let bin = match bins.as_slice() {
            [only] => *only,
            [] => return Err(Error::new(format!("--app: package `{name}` has no binary"))),
            several => several
                .iter()
                .copied()
                .find(|t| text(&t["name"]) == name)
                .ok_or_else(|| {
                    Error::new(format!(
                        "--app: package `{name}` has several binaries and none is named `{name}`"
                    ))
                })?,
        };
        let build_script = targets
            .iter()
            .find(|t| has_kind(t, "custom-build"))
            .map(|t| text(&t["src_path"]));
        Ok(Self {
            package: name,
            version: text(&package["version"]),
            edition: text(&bin["edition"]),
            bin: text(&bin["name"]),
            main: text(&bin["src_path"]),
            build_script,
            dependencies: dependency_tables(package, runtime)?,
            features: feature_lines(package),
        })
    }

    /// The stand-in's `Cargo.toml`.
    pub fn manifest(&self) -> String {
        let mut toml = String::new();
        let _ = writeln!(
            toml,
            "# Made by `cargo xtask run --app`: the package `{}`, built as an rguest guest \
             with the runtime as its `hermit`. Do not edit; it is made anew each run.",
            self.package
        );
        let _ = writeln!(toml, "[package]");
        let _ = writeln!(toml, "name = {}", quoted(&self.package));
        let _ = writeln!(toml, "version = {}", quoted(&self.version));
        let _ = writeln!(toml, "edition = {}", quoted(&self.edition));
        let _ = writeln!(toml, "publish = false");
        let _ = writeln!(toml, "autobins = false");
        match &self.build_script {
            Some(script) => drop(writeln!(toml, "build = {}", quoted(script))),
            None => drop(writeln!(toml, "build = false")),
        }
        let _ = writeln!(toml, "\n[[bin]]");
        let _ = writeln!(toml, "name = {}", quoted(&self.bin));
        let _ = writeln!(toml, "path = {}", quoted(&self.main));
        for (header, lines) in &self.dependencies {
            let _ = write!(toml, "\n[{header}]\n{lines}");
        }
        if !self.features.is_empty() {
            let _ = write!(toml, "\n[features]\n{}", self.features);
        }
        toml.push_str(
            "\n# A workspace of its own, built like the std guests.\n[workspace]\n\n\
             [profile.release]\npanic = \"abort\"\ndebug = 1\n",
        );
        toml
    }
}

/// The dependency tables of `package` (normal and build dependencies, per
/// target), with `hermit` replaced by the runtime at `runtime`; dev
/// dependencies are left out.
fn dependency_tables(package: &Value, runtime: &Path) -> Result<Vec<(String, String)>> {
    let mut tables: Vec<(String, String)> = Vec::new();
    let mut add = |header: String, line: String| match tables.iter_mut().find(|(h, _)| *h == header)
    {
        Some((_, lines)) => lines.push_str(&line),
        None => tables.push((header, line)),
    };
    add(
        "dependencies".into(),
        format!(
            "hermit = {{ package = \"rguest-hermit\", path = {} }}\n",
            quoted(&runtime.to_string_lossy())
        ),
    );
    for dependency in package["dependencies"].as_array().into_iter().flatten() {
        let key = dependency["rename"]
            .as_str()
            .unwrap_or_else(|| dependency["name"].as_str().unwrap_or_default());
        if key == "hermit" || dependency["name"] == "rguest-hermit" {
            continue;
        }
        let table = match dependency["kind"].as_str() {
            None | Some("normal") => "dependencies",
            Some("build") => "build-dependencies",
            Some(_) => continue,
        };
        let header = match dependency["target"].as_str() {
            Some(platform) => format!("target.{}.{table}", quoted(platform)),
            None => table.to_string(),
        };
        add(
            header,
            format!("{} = {}\n", quoted(key), dependency_spec(dependency)?),
        );
    }
    Ok(tables)
}

/// One dependency as an inline table.
fn dependency_spec(dependency: &Value) -> Result<String> {
    let name = text(&dependency["name"]);
    let mut parts = vec![format!("package = {}", quoted(&name))];
    match (dependency["path"].as_str(), dependency["source"].as_str()) {
        (Some(path), _) => parts.push(format!("path = {}", quoted(path))),
        (None, Some(source)) if source.starts_with("registry+") => {}
        (None, source) => {
            return Err(Error::new(format!(
                "--app: dependency `{name}` comes from {}, which --app does not take \
                 (crates.io and path dependencies only)",
                source.unwrap_or("an unknown source")
            )));
        }
    }
    if let Some(registry) = dependency["registry"].as_str() {
        parts.push(format!("registry = {}", quoted(registry)));
    }
    parts.push(format!("version = {}", quoted(&text(&dependency["req"]))));
    if dependency["uses_default_features"] == false {
        parts.push("default-features = false".into());
    }
    if dependency["optional"] == true {
        parts.push("optional = true".into());
    }
    let features: Vec<String> = dependency["features"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| quoted(f.as_str().unwrap_or_default()))
        .collect();
    if !features.is_empty() {
        parts.push(format!("features = [{}]", features.join(", ")));
    }
    Ok(format!("{{ {} }}", parts.join(", ")))
}

/// The package's `[features]` table as lines, in name order.
fn feature_lines(package: &Value) -> String {
    let mut lines = String::new();
    for (feature, enables) in package["features"].as_object().into_iter().flatten() {
        let enables: Vec<String> = enables
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| quoted(e.as_str().unwrap_or_default()))
            .collect();
        let _ = writeln!(lines, "{} = [{}]", quoted(feature), enables.join(", "));
    }
    lines
}

/// Writes the stand-in's `Cargo.toml`, and the user's `Cargo.lock` beside
/// it when there is one (so the user's versions are the ones built).
fn write_wrapper(wrapper: &Wrapper, dir: &Path, metadata: &Value) -> Result<()> {
    let fail = |e: std::io::Error| Error::new(format!("cannot write {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(fail)?;
    std::fs::write(dir.join("Cargo.toml"), wrapper.manifest()).map_err(fail)?;
    let user_lock =
        Path::new(metadata["workspace_root"].as_str().unwrap_or_default()).join("Cargo.lock");
    if user_lock.is_file() {
        std::fs::copy(&user_lock, dir.join("Cargo.lock")).map_err(fail)?;
    }
    Ok(())
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}

/// A TOML basic string.
fn quoted(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plain_package() -> Value {
        json!({
            "name": "wordcount",
            "version": "0.3.1",
            "manifest_path": "/home/u/wordcount/Cargo.toml",
            "targets": [{
                "kind": ["bin"], "name": "wordcount", "edition": "2021",
                "src_path": "/home/u/wordcount/src/main.rs"
            }],
            "features": {"default": ["fast"], "fast": ["dep:memchr"]},
            "dependencies": [
                {"name": "memchr", "source": "registry+https://github.com/rust-lang/crates.io-index",
                 "req": "=2.7.4", "kind": null, "rename": null, "optional": true,
                 "uses_default_features": false, "features": ["std"], "target": null,
                 "registry": null},
                {"name": "util", "source": null, "req": "*", "kind": null, "rename": "helpers",
                 "optional": false, "uses_default_features": true, "features": [],
                 "target": "cfg(unix)", "registry": null, "path": "/home/u/util"},
                {"name": "proptest", "source": "registry+https://github.com/rust-lang/crates.io-index",
                 "req": "^1", "kind": "dev", "rename": null, "optional": false,
                 "uses_default_features": true, "features": [], "target": null, "registry": null},
                {"name": "hermit", "source": "registry+https://github.com/rust-lang/crates.io-index",
                 "req": "^0.11", "kind": null, "rename": null, "optional": false,
                 "uses_default_features": true, "features": [], "target": null, "registry": null}
            ]
        })
    }

    #[test]
    fn a_plain_crate_gets_the_runtime_and_keeps_its_dependencies() {
        let wrapper = Wrapper::from_package(&plain_package(), Path::new("/r/hermit")).unwrap();
        assert_eq!(
            (wrapper.bin.as_str(), wrapper.edition.as_str()),
            ("wordcount", "2021")
        );
        let toml = wrapper.manifest();
        for line in [
            "name = \"wordcount\"\nversion = \"0.3.1\"\nedition = \"2021\"",
            "[[bin]]\nname = \"wordcount\"\npath = \"/home/u/wordcount/src/main.rs\"",
            "[dependencies]\nhermit = { package = \"rguest-hermit\", path = \"/r/hermit\" }\n\
             \"memchr\" = { package = \"memchr\", version = \"=2.7.4\", default-features = false, \
             optional = true, features = [\"std\"] }",
            "[target.\"cfg(unix)\".dependencies]\n\"helpers\" = { package = \"util\", \
             path = \"/home/u/util\", version = \"*\" }",
            "[features]\n\"default\" = [\"fast\"]\n\"fast\" = [\"dep:memchr\"]",
            "build = false",
            "[workspace]",
        ] {
            assert!(toml.contains(line), "{line}\nmissing from\n{toml}");
        }
        assert!(!toml.contains("proptest"), "{toml}");
        assert_eq!(toml.matches("hermit =").count(), 1, "{toml}");
    }

    #[test]
    fn libraries_and_git_dependencies_are_refused_in_one_line() {
        let mut package = plain_package();
        package["targets"]
            .as_array_mut()
            .unwrap()
            .push(json!({"kind": ["lib"], "name": "wordcount", "src_path": "/x/lib.rs"}));
        let error = Wrapper::from_package(&package, Path::new("/r")).unwrap_err();
        assert!(error.0.contains("library"), "{error}");
        let mut package = plain_package();
        package["dependencies"][0]["source"] = json!("git+https://example.org/memchr");
        let error = Wrapper::from_package(&package, Path::new("/r")).unwrap_err();
        assert!(error.0.contains("git+https"), "{error}");
        assert!(!error.0.contains('\n'));
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(quoted(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(quoted("tab\there"), "\"tab\\u0009here\"");
    }
}

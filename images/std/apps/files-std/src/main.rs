//! `files-std`: std's file system calls on the runtime's in-memory file
//! system.
//!
//! Under `/tmp/files-std` it makes nested directories (`create_dir_all`),
//! writes files and reads them back (`write`, `read_to_string`, appending
//! through `OpenOptions`), lists a directory (`read_dir`), checks sizes and
//! kinds (`metadata`), removes the files and directories again
//! (`remove_file`, `remove_dir`) and checks that a removed file is
//! `NotFound`. Prints `files-std: ok` and exits 0, or says which step
//! failed and exits 1.

use hermit as _;
use std::fs::{self, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::path::Path;
use std::process::ExitCode;

const ROOT: &str = "/tmp/files-std";

fn main() -> ExitCode {
    match exercise(Path::new(ROOT)) {
        Ok(()) => {
            println!("files-std: ok: made, wrote, read, listed and removed files under {ROOT}");
            ExitCode::SUCCESS
        }
        Err(failure) => {
            println!("files-std: FAILED: {failure}");
            ExitCode::from(1)
        }
    }
}

/// Every step, in order; the first that fails is the answer.
fn exercise(root: &Path) -> Result<(), String> {
    let nested = root.join("a/b");
    fs::create_dir_all(&nested).map_err(step("create_dir_all a/b"))?;
    let poem = nested.join("poem.txt");
    fs::write(&poem, "roses are red\n").map_err(step("write poem.txt"))?;
    append(&poem, "violets are blue\n").map_err(step("append to poem.txt"))?;
    let text = fs::read_to_string(&poem).map_err(step("read_to_string poem.txt"))?;
    expect("poem.txt", &text, "roses are red\nviolets are blue\n")?;
    fs::write(nested.join("numbers.bin"), [1u8, 2, 3, 4]).map_err(step("write numbers.bin"))?;
    let numbers = fs::read(nested.join("numbers.bin")).map_err(step("read numbers.bin"))?;
    expect("numbers.bin", &format!("{numbers:?}"), "[1, 2, 3, 4]")?;

    let mut names: Vec<String> = fs::read_dir(&nested)
        .map_err(step("read_dir a/b"))?
        .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<io::Result<_>>()
        .map_err(step("read a/b's entries"))?;
    names.sort();
    expect("a/b's entries", &names.join(","), "numbers.bin,poem.txt")?;
    let meta = fs::metadata(&poem).map_err(step("metadata poem.txt"))?;
    expect(
        "poem.txt's size and kind",
        &format!("{} {}", meta.len(), meta.is_file()),
        "31 true",
    )?;
    let dir_meta = fs::metadata(&nested).map_err(step("metadata a/b"))?;
    expect("a/b's kind", &dir_meta.is_dir().to_string(), "true")?;

    for file in ["poem.txt", "numbers.bin"] {
        fs::remove_file(nested.join(file)).map_err(step("remove_file"))?;
    }
    match fs::read_to_string(&poem) {
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        other => {
            return Err(format!(
                "a removed file reads as {other:?}, expected NotFound"
            ));
        }
    }
    fs::remove_dir(&nested).map_err(step("remove_dir a/b"))?;
    fs::remove_dir(root.join("a")).map_err(step("remove_dir a"))?;
    if root.join("a").exists() {
        return Err("a/ still exists after remove_dir".into());
    }
    Ok(())
}

fn append(path: &Path, text: &str) -> io::Result<()> {
    OpenOptions::new()
        .append(true)
        .open(path)?
        .write_all(text.as_bytes())
}

/// Turns an I/O error into a message naming the step that failed.
fn step(what: &'static str) -> impl Fn(io::Error) -> String {
    move |e| format!("{what}: {e}")
}

fn expect(what: &str, seen: &str, expected: &str) -> Result<(), String> {
    if seen == expected {
        Ok(())
    } else {
        Err(format!("{what}: got {seen:?}, expected {expected:?}"))
    }
}

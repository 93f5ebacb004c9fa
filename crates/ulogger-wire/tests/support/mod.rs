//! C programs compiled at test time with the machine's compiler (`$CC`,
//! else `cc`): the firmware stand-in and the `snprintf` oracle.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The fixtures directory.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A fresh directory under the target's test scratch space.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the scratch directory");
    dir
}

/// Compiles `source` into `output` with `flags`. Without a C compiler the
/// test is skipped (`None`), except under CI (`CI=true`), where it fails:
/// CI must run these tests. A compiler that refuses the source fails.
pub fn compile(source: &Path, output: &Path, flags: &[&str]) -> Option<PathBuf> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let result = Command::new(&cc)
        .args(flags)
        .arg(source)
        .arg("-o")
        .arg(output)
        .output();
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!(
                    "no C compiler ({cc}): CI must run the decoding tests; install gcc or set CC"
                );
            }
            eprintln!("skipped: no C compiler ({cc}); install gcc or set CC to run this test");
            None
        }
        Err(e) => panic!("cannot run {cc}: {e}"),
        Ok(out) if !out.status.success() => panic!(
            "{cc} failed on {}:\n{}",
            source.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
        Ok(_) => Some(output.to_path_buf()),
    }
}

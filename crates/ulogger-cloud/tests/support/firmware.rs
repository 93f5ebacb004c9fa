//! Tiny firmware ELFs, compiled by the machine's C compiler.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The version string the test firmware embeds.
pub const VERSION: &str = "v1.2.3-test";

const SOURCE: &str = r#"
struct ulogger_module { const char *name; unsigned int mask; };
#ifndef NO_MODULES
__attribute__((section(".ulogger.debug_modules"), used))
const struct ulogger_module ulogger_debug_modules[] = { { "MAIN", 1u }, { "RADIO", 2u } };
const unsigned int ulogger_debug_modules_count = 2;
#endif
__attribute__((used)) const char firmware_version[] = "v1.2.3-test";
int main(void) { return firmware_version[0] == 'v' ? 0 : 1; }
"#;

/// Compiles the test firmware into `dir` (with the
/// `.ulogger.debug_modules` table unless `with_modules` is false).
/// Without a C compiler the test is skipped (`None`), except under
/// `CI=true`, where a missing compiler fails it.
pub fn compile(dir: &Path, with_modules: bool) -> Option<PathBuf> {
    let source = dir.join("firmware.c");
    std::fs::write(&source, SOURCE).unwrap();
    let out = dir.join(if with_modules {
        "firmware.elf"
    } else {
        "firmware-nomod.elf"
    });
    let mut cc = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
    cc.arg("-o").arg(&out).arg(&source);
    if !with_modules {
        cc.arg("-DNO_MODULES");
    }
    match cc.output() {
        Ok(output) if output.status.success() => Some(out),
        Ok(output) => panic!(
            "the C compiler failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("no C compiler ({e}): CI must have one (install gcc, or set CC)")
        }
        Err(e) => {
            eprintln!("skipped: no C compiler ({e}); install gcc or set CC");
            None
        }
    }
}

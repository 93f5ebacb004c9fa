//! Standard output that ends the command quietly when its reader has gone
//! (`ulogger emulator records | head -1`), as a Unix tool killed by
//! SIGPIPE does, instead of the panic `println!` gives on a closed pipe.

use std::io::{self, Write};
use std::process;

/// The exit status of a command whose output pipe was closed: what a shell
/// reports for a process ended by SIGPIPE (128 + 13).
pub const BROKEN_PIPE_STATUS: i32 = 141;

/// Writes `args` to standard output; ends the process when it cannot.
pub fn write(args: std::fmt::Arguments<'_>, newline: bool) {
    let mut out = io::stdout().lock();
    let written = out.write_fmt(args).and_then(|()| {
        if newline {
            out.write_all(b"\n")
        } else {
            Ok(())
        }
    });
    if let Err(error) = written {
        gone(&error);
    }
}

/// Ends the process after a failed write to standard output: quietly
/// for a closed pipe, with the reason otherwise (a full disk, say).
pub fn gone(error: &io::Error) -> ! {
    if error.kind() == io::ErrorKind::BrokenPipe {
        process::exit(BROKEN_PIPE_STATUS);
    }
    eprintln!("error: cannot write to standard output: {error}");
    process::exit(1);
}

//! The uLogger platform's formats, sans I/O.

//! The `wfm-worker` binary. The program is [`wfm_worker::entry`].
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    wfm_worker::entry::main()
}

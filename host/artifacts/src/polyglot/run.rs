//! Running a toolchain's command.

use std::process::Command;

use super::Error;

/// Run `command`; on failure an error with what it printed.
pub fn run(command: &mut Command, what: &str) -> Result<(), Error> {
    let output = command
        .output()
        .map_err(|e| Error::new(format!("{what}: cannot run {command:?}: {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    Err(Error::new(format!(
        "{what} failed ({status}).\ncommand: {command:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        status = output.status,
        stdout = String::from_utf8_lossy(&output.stdout),
        stderr = String::from_utf8_lossy(&output.stderr),
    )))
}

//! The JavaScript and Python toolchains, installed under
//! `<target>/polyglot/`, and the file locks that make each language's work
//! happen once per target directory.

use std::collections::hash_map::DefaultHasher;
use std::fs::{self, File};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::run::run;
use super::{Error, Language, polyglot_dir, workspace};

static NODE_MODULES: OnceLock<Result<PathBuf, Error>> = OnceLock::new();
static PYTHON: OnceLock<Result<PathBuf, Error>> = OnceLock::new();

/// Run `work` holding `<target>/polyglot/<language>.lock`. Other processes
/// (and threads) asking for the same language wait; the lock goes with the
/// file handle, also when `work` panics.
pub fn locked<T>(language: Language, work: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    let dir = polyglot_dir();
    fs::create_dir_all(&dir).map_err(|e| Error::io("cannot create", &dir, &e))?;
    let path = dir.join(match language {
        Language::JavaScript => "javascript.lock",
        Language::Python => "python.lock",
    });
    let file = File::create(&path).map_err(|e| Error::io("cannot open", &path, &e))?;
    file.lock()
        .map_err(|e| Error::io("cannot lock", &path, &e))?;
    let result = work();
    drop(file);
    result
}

/// The stamp an install writes: the hash of the lock file it installed.
pub fn install_stamp(language: Language) -> PathBuf {
    match language {
        Language::JavaScript => polyglot_dir().join("js/.installed"),
        Language::Python => polyglot_dir().join("venv/.installed"),
    }
}

/// `<target>/polyglot/js/node_modules`, with `npm ci` of the JavaScript
/// SDK's lock file run first unless the installed one is from the same lock
/// file.
pub fn node_modules() -> Result<&'static Path, Error> {
    match NODE_MODULES.get() {
        Some(done) => done.as_deref().map_err(Clone::clone),
        None => locked(Language::JavaScript, ensure_node_modules),
    }
}

/// The virtualenv's interpreter (`<target>/polyglot/venv/bin/python`),
/// with `sdk/python/requirements.txt` (componentize-py, pytest) installed
/// first unless the installed one is from the same file.
pub fn python() -> Result<&'static Path, Error> {
    match PYTHON.get() {
        Some(done) => done.as_deref().map_err(Clone::clone),
        None => locked(Language::Python, ensure_python),
    }
}

/// [`node_modules`] for a caller that holds the JavaScript lock.
pub(super) fn ensure_node_modules() -> Result<&'static Path, Error> {
    NODE_MODULES
        .get_or_init(install_node_modules)
        .as_deref()
        .map_err(Clone::clone)
}

/// [`python`] for a caller that holds the Python lock.
pub(super) fn ensure_python() -> Result<&'static Path, Error> {
    PYTHON
        .get_or_init(install_python)
        .as_deref()
        .map_err(Clone::clone)
}

/// Make `<dir>/node_modules/kiln-sdk` a link to this checkout's
/// `sdk/js`: what `npm install` makes of a plugin's
/// `"kiln-sdk": "file:…/sdk/js"` dependency, without npm.
pub fn link_js_sdk(dir: &Path) -> Result<(), Error> {
    let sdk = workspace().join("sdk/js");
    let modules = dir.join("node_modules");
    let link = modules.join("kiln-sdk");
    if fs::read_link(&link).is_ok_and(|target| target == sdk) {
        return Ok(());
    }
    fs::create_dir_all(&modules).map_err(|e| Error::io("cannot create", &modules, &e))?;
    let _ = fs::remove_file(&link);
    match symlink_dir(&sdk, &link) {
        Ok(()) => Ok(()),
        // Another thread or process linked it meanwhile.
        Err(_) if fs::read_link(&link).is_ok_and(|target| target == sdk) => Ok(()),
        Err(e) => Err(Error::io("cannot link", &link, &e)),
    }
}

#[cfg(unix)]
fn symlink_dir(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(windows)]
fn symlink_dir(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::windows::fs::symlink_dir(target, link)
}

fn install_node_modules() -> Result<PathBuf, Error> {
    let root = polyglot_dir().join("js");
    let sources = [
        workspace().join("sdk/js/package.json"),
        workspace().join("sdk/js/package-lock.json"),
    ];
    let wanted = hash_files(&sources)?;
    let stamp = install_stamp(Language::JavaScript);
    let modules = root.join("node_modules");
    if modules.is_dir() && fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == wanted) {
        return Ok(modules);
    }
    fs::create_dir_all(&root).map_err(|e| Error::io("cannot create", &root, &e))?;
    for source in &sources {
        let name = source.file_name().unwrap_or_default();
        fs::copy(source, root.join(name)).map_err(|e| Error::io("cannot copy", source, &e))?;
    }
    let mut command = Command::new("npm");
    command
        .current_dir(&root)
        .args([
            "ci",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            "--cache",
        ])
        .arg(polyglot_dir().join("npm-cache"));
    run(
        &mut command,
        "installing the JavaScript toolchain (npm ci of sdk/js/package-lock.json)",
    )?;
    fs::write(&stamp, &wanted).map_err(|e| Error::io("cannot write", &stamp, &e))?;
    Ok(modules)
}

fn install_python() -> Result<PathBuf, Error> {
    let venv = polyglot_dir().join("venv");
    let python = venv.join("bin/python");
    let requirements = workspace().join("sdk/python/requirements.txt");
    let wanted = hash_files(std::slice::from_ref(&requirements))?;
    let stamp = install_stamp(Language::Python);
    if python.is_file() && fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == wanted) {
        return Ok(python);
    }
    if !python.is_file() {
        let mut command = Command::new("python3");
        command.args(["-m", "venv"]).arg(&venv);
        run(
            &mut command,
            "creating the Python virtualenv (python3 -m venv)",
        )?;
    }
    let mut command = Command::new(&python);
    command
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg("--cache-dir")
        .arg(polyglot_dir().join("pip-cache"))
        .arg("-r")
        .arg(&requirements);
    run(
        &mut command,
        "installing the Python toolchain (pip install -r sdk/python/requirements.txt)",
    )?;
    fs::write(&stamp, &wanted).map_err(|e| Error::io("cannot write", &stamp, &e))?;
    Ok(python)
}

/// A hash of the contents of `files`, as hex.
fn hash_files(files: &[PathBuf]) -> Result<String, Error> {
    let mut hasher = DefaultHasher::new();
    for file in files {
        fs::read(file)
            .map_err(|e| Error::io("cannot read", file, &e))?
            .hash(&mut hasher);
    }
    Ok(format!("{:016x}", hasher.finish()))
}

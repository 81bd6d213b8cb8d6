//! What a component is built from, hashed: the stamp kept beside it.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use super::{Error, Language, Plugin, toolchain};

/// A hash of the plugin's own files, its language's SDK, the WIT, its
/// world and entry, and the installed toolchain (by its install stamp).
/// Not a content address, only a stamp compared with itself on this
/// machine.
pub fn hash(workspace: &Path, plugin: &Plugin) -> Result<String, Error> {
    let mut files = Vec::new();
    collect_files(Path::new(plugin.dir), &mut files);
    collect_files(&workspace.join("wit"), &mut files);
    let sdk = match plugin.language {
        Language::JavaScript => "sdk/js",
        Language::Python => "sdk/python",
    };
    collect_files(&workspace.join(sdk), &mut files);
    files.sort();
    let mut hasher = DefaultHasher::new();
    for file in &files {
        file.hash(&mut hasher);
        fs::read(file)
            .map_err(|e| Error::io("cannot read", file, &e))?
            .hash(&mut hasher);
    }
    plugin.world.hash(&mut hasher);
    plugin.entry.hash(&mut hasher);
    fs::read(toolchain::install_stamp(plugin.language))
        .unwrap_or_default()
        .hash(&mut hasher);
    Ok(format!("{:016x}", hasher.finish()))
}

/// Source files under `dir`, skipping hidden files, installs, caches and
/// the SDKs' templates.
fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.')
            || name == "node_modules"
            || name == "__pycache__"
            || name == "template"
        {
            continue;
        }
        if path.is_dir() {
            collect_files(&path, files);
        } else {
            files.push(path);
        }
    }
}

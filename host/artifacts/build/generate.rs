//! The code `src/lib.rs` includes: paths, the polyglot plugin table and
//! the `foreach_*!` macros.

use std::path::{Path, PathBuf};

use crate::Layout;
use crate::members::{Kind, Plugin};
use crate::polyglot::PolyglotPlugin;

pub fn code(
    layout: &Layout,
    plugins: &[Plugin],
    components: &[PathBuf],
    polyglot: &[PolyglotPlugin],
) -> String {
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line(format!(
        "/// The directory holding the example components, `<target>/plugins`.\n\
         pub const EXAMPLES_DIR: &str = {:?};\n\
         /// The directory holding the fixture components, `<target>/plugins/fixtures`.\n\
         pub const FIXTURES_DIR: &str = {:?};\n\
         /// The workspace root this crate was built in.\n\
         pub const WORKSPACE_DIR: &str = {:?};\n\
         /// The target directory (`$CARGO_TARGET_DIR`, else `<workspace>/target`).\n\
         pub const TARGET_DIR: &str = {:?};",
        path_str(&layout.examples_dir),
        path_str(&layout.fixtures_dir),
        path_str(&layout.workspace),
        path_str(&layout.target_dir),
    ));
    for (plugin, path) in plugins.iter().zip(components) {
        line(format!(
            "/// The component built from the `{package}` crate.\n\
             pub const {name}: &str = {path:?};",
            package = plugin.package,
            name = plugin.package.to_uppercase(),
            path = path_str(path),
        ));
    }
    polyglot_table(&mut line, layout, polyglot);
    for kind in [Kind::Example, Kind::Fixture] {
        foreach_macro(&mut line, kind, plugins, polyglot);
    }
    out
}

fn polyglot_table(line: &mut impl FnMut(String), layout: &Layout, polyglot: &[PolyglotPlugin]) {
    line(format!(
        "/// Where the JavaScript examples go when built, `<target>/plugins/javascript`.\n\
         pub const JAVASCRIPT_DIR: &str = {:?};\n\
         /// Where the Python examples go when built, `<target>/plugins/python`.\n\
         pub const PYTHON_DIR: &str = {:?};",
        path_str(&layout.examples_dir.join("javascript")),
        path_str(&layout.examples_dir.join("python")),
    ));
    line(format!(
        "/// Every JavaScript and Python plugin of `plugins/`, built on demand.\n\
         pub static POLYGLOT_PLUGINS: [polyglot::Plugin; {}] = [",
        polyglot.len()
    ));
    for plugin in polyglot {
        let dest_dir = match plugin.kind {
            Kind::Example => layout.examples_dir.join(plugin.language.examples_dir()),
            Kind::Fixture => layout.fixtures_dir.clone(),
        };
        let component = dest_dir.join(format!("{}.wasm", plugin.plugin));
        line(format!(
            "    polyglot::Plugin::new({id:?}, polyglot::Language::{language}, {world:?}, {dir:?}, {entry:?}, {component:?}, {fixture}),",
            id = plugin.id,
            language = plugin.language.variant(),
            world = plugin.world,
            dir = path_str(&layout.workspace.join(&plugin.dir)),
            entry = plugin.entry,
            component = path_str(&component),
            fixture = plugin.kind == Kind::Fixture,
        ));
    }
    line("];".to_string());
    for (index, plugin) in polyglot.iter().enumerate() {
        line(format!(
            "/// The component built from `{dir}` ({world}), built on the first call\n\
             /// (see [`polyglot::Plugin::component`]).\n\
             pub fn {id}() -> &'static str {{\n    POLYGLOT_PLUGINS[{index}].component()\n}}",
            dir = plugin.dir,
            world = plugin.world,
            id = plugin.id,
        ));
    }
}

fn foreach_macro(
    line: &mut impl FnMut(String),
    kind: Kind,
    plugins: &[Plugin],
    polyglot: &[PolyglotPlugin],
) {
    let (macro_name, noun) = match kind {
        Kind::Example => ("foreach_example", "Rust example plugin"),
        Kind::Fixture => ("foreach_fixture", "fixture (Rust, JavaScript and Python)"),
    };
    line(format!(
        "/// Calls `$mac!(name)` once for every {noun}, `name` being its crate\n\
         /// (or, for JavaScript and Python, directory) name.\n\
         #[macro_export]\n\
         macro_rules! {macro_name} {{\n    ($mac:ident) => {{"
    ));
    for plugin in plugins.iter().filter(|p| p.kind == kind) {
        line(format!("        $mac!({});", plugin.package));
    }
    if kind == Kind::Fixture {
        for plugin in polyglot.iter().filter(|p| p.kind == kind) {
            line(format!("        $mac!({});", plugin.id));
        }
    }
    line("    };\n}".to_string());
}

fn path_str(path: &Path) -> &str {
    path.to_str()
        .unwrap_or_else(|| panic!("the path {} is not UTF-8", path.display()))
}

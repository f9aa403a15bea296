//! The house rules, read from the code's own imports: rooms stand in layers, and a room
//! imports only rooms below it, so no module imports a module that imports it.
//!
//! Every `crate::ROOM` path outside `#[cfg(test)]` code counts, in `use` lines (grouped or
//! not) and inline. A new room must be placed in [`LAYERS`]; moving an import upward fails
//! here with the file that does it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The rooms of `src/`, top layer first. A room may import any room in a later layer, and
/// none in its own or an earlier one.
const LAYERS: &[&[&str]] = &[
    &["cli"],
    &["demo"],
    &["daemon", "doctor"],
    &["admin"],
    &["http"],
    &["fill", "serve"],
    &["metrics"],
    &["store"],
    &["config"],
    &["schedule"],
    &["clock", "durable", "object_path", "signal"],
];

#[test]
fn every_room_imports_only_rooms_below_it() {
    let imports = room_imports();
    let layer_of = |room: &str| {
        LAYERS
            .iter()
            .position(|layer| layer.contains(&room))
            .unwrap_or_else(|| panic!("src/{room} is in no layer: add it to LAYERS"))
    };
    let mut upward = Vec::new();
    for ((from, to), files) in &imports {
        if layer_of(to) <= layer_of(from) {
            upward.push(format!("{from} -> {to} (in {})", files.join(", ")));
        }
    }
    assert!(
        upward.is_empty(),
        "imports that do not point down:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_room_graph_has_no_cycle() {
    let imports = room_imports();
    let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (from, to) in imports.keys() {
        edges.entry(from).or_default().insert(to);
    }
    // Kahn's algorithm: whatever cannot be ordered lies on a cycle.
    let rooms: BTreeSet<&str> = edges
        .iter()
        .flat_map(|(from, tos)| std::iter::once(*from).chain(tos.iter().copied()))
        .collect();
    let mut imported_by: BTreeMap<&str, usize> = rooms.iter().map(|room| (*room, 0)).collect();
    for tos in edges.values() {
        for to in tos {
            *imported_by.entry(to).or_default() += 1;
        }
    }
    let mut ready: Vec<&str> = imported_by
        .iter()
        .filter(|(_, count)| **count == 0)
        .map(|(room, _)| *room)
        .collect();
    let mut ordered = 0;
    while let Some(room) = ready.pop() {
        ordered += 1;
        for to in edges.get(room).into_iter().flatten() {
            let count = imported_by.entry(to).or_default();
            *count -= 1;
            if *count == 0 {
                ready.push(to);
            }
        }
    }
    let on_cycles: Vec<&str> = imported_by
        .iter()
        .filter(|(_, count)| **count > 0)
        .map(|(room, _)| *room)
        .collect();
    assert_eq!(
        ordered,
        rooms.len(),
        "rooms on a cycle, or imported only through one: {on_cycles:?}"
    );
}

/// `(from room, to room)` -> the files that import `to` from `from`.
fn room_imports() -> BTreeMap<(String, String), Vec<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut imports: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for file in rust_files(&src) {
        let relative = file.strip_prefix(&src).expect("under src");
        let Some(room) = room_of(relative) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("read source");
        for target in crate_paths(&non_test_code(&text)) {
            if target != room {
                let files = imports.entry((room.clone(), target)).or_default();
                let name = relative.display().to_string();
                if !files.contains(&name) {
                    files.push(name);
                }
            }
        }
    }
    assert!(
        imports.len() > 20,
        "the import scan found almost nothing: {imports:?}"
    );
    imports
}

/// The room a file belongs to: its first path component (`http/tls.rs` -> `http`); `None`
/// for the crate root and the binary.
fn room_of(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let room = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(room, "lib" | "main")).then(|| room.to_owned())
}

/// The code before the first `#[cfg(test)]` (test modules sit at the end of a file), with
/// line comments removed.
fn non_test_code(text: &str) -> String {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    code.lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first component of every `crate::` path, including each member of a grouped `use
/// crate::{a::b, c}`.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut rooms = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = matching_brace(group);
            for item in top_level_items(&group[..end]) {
                rooms.insert(first_segment(item));
            }
        } else {
            rooms.insert(first_segment(rest));
        }
    }
    rooms.retain(|room| !room.is_empty() && room != "self");
    rooms
}

/// The index of the `}` closing a group whose `{` was just consumed.
fn matching_brace(group: &str) -> usize {
    let mut depth = 0usize;
    for (index, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return index,
            '}' => depth -= 1,
            _ => {}
        }
    }
    group.len()
}

/// The comma-separated items of a group, nested groups kept whole.
fn top_level_items(group: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (index, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                items.push(&group[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    items.push(&group[start..]);
    items
}

/// The identifier a path starts with.
fn first_segment(path: &str) -> String {
    path.trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files
}

#[test]
fn the_scanner_reads_grouped_and_inline_paths() {
    let code = "use crate::a::B;\nuse crate::{b::{C, D}, c, self};\nfn f() { crate::d::e(); }";
    let found: Vec<String> = crate_paths(code).into_iter().collect();
    assert_eq!(found, ["a", "b", "c", "d"]);
}

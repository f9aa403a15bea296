//! The house rules, read from the code's own syntax: rooms stand in layers and a room imports
//! only rooms below it; and no module (a file, or an inline `mod`) imports a module that
//! imports it, at any depth.
//!
//! Every file under `src/` is parsed with `syn`. Paths are collected from `use` trees (grouped,
//! renamed, glob), from expressions and types, and from macro arguments; `crate::`, `self::`
//! and `super::` (any number) are resolved against the module the path is written in; items
//! under `#[cfg(test)]` do not count. A path ending in an item is charged to the module that
//! holds the item. The same check runs by hand with cargo-modules:
//! `cargo modules dependencies --lib --no-externs --no-sysroot --no-fns --no-types --no-traits --no-owns`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

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
    &["site"],
    &["store"],
    &["config"],
    &["schedule"],
    &["clock", "durable", "object_path", "signal"],
];

/// A module's path below the crate root, e.g. `["http", "tls"]`.
type ModulePath = Vec<String>;

#[test]
fn every_room_imports_only_rooms_below_it() {
    let crate_graph = CrateGraph::read();
    let layer_of = |room: &str| {
        LAYERS
            .iter()
            .position(|layer| layer.contains(&room))
            .unwrap_or_else(|| panic!("src/{room} is a room in no layer: place it in LAYERS"))
    };
    let mut upward = BTreeSet::new();
    for (from, to) in crate_graph.module_edges() {
        let (Some(from_room), Some(to_room)) = (from.first(), to.first()) else {
            continue;
        };
        if from_room != to_room && layer_of(to_room) <= layer_of(from_room) {
            upward.insert(format!("{} -> {}", from.join("::"), to.join("::")));
        }
    }
    assert!(
        upward.is_empty(),
        "imports that do not point down the layers:\n{}",
        upward.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn no_module_imports_a_module_that_imports_it() {
    let crate_graph = CrateGraph::read();
    let edges = crate_graph.module_edges();
    assert!(edges.len() > 60, "the scan found almost nothing: {edges:?}");
    let cycles = strongly_connected(&edges);
    assert!(
        cycles.is_empty(),
        "modules that import each other (directly or around a circle):\n{}",
        cycles
            .iter()
            .map(|cycle| cycle
                .iter()
                .map(|module| module.join("::"))
                .collect::<Vec<_>>()
                .join(", "))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_scanner_resolves_what_the_compiler_resolves() {
    let code = r#"
        use crate::a::B;
        use crate::{b::{C, D}, c};
        use super::e::F;
        use self::g::H;
        use super::super::i::J;
        fn f() { crate :: k::l(); let _ = super::m::N; tracing::info!("{}", crate::o::p()); }
        const URL: &str = "http://x"; fn q() { crate::r::s(); }
        #[cfg(test)] mod tests { use crate::hidden::X; }
        pub fn late(_: crate::t::U) {}
    "#;
    let file: syn::File = syn::parse_str(code).unwrap();
    let mut scanner = Scanner::new(vec!["room".into(), "child".into()]);
    scanner.visit_file(&file);
    let found: BTreeSet<String> = scanner.paths.iter().map(|path| path.join("::")).collect();
    let expected = [
        "a::B",
        "b::C",
        "b::D",
        "c",
        "room::e::F",
        "room::child::g::H",
        "i::J",
        "k::l",
        "room::m::N",
        "o::p",
        "r::s",
        "t::U",
    ];
    assert_eq!(
        found,
        expected.iter().map(|path| path.to_string()).collect(),
        "hidden under cfg(test) must not count"
    );
}

/// Every module of the crate and the absolute paths each one names.
struct CrateGraph {
    /// Modules that exist (files and inline `mod` blocks).
    modules: BTreeSet<ModulePath>,
    /// Module -> the absolute paths written in it.
    paths: BTreeMap<ModulePath, BTreeSet<ModulePath>>,
    /// Module -> paths written without `crate`/`self`/`super`: a child module's items
    /// (`cache::load`) when the first segment is a child, else an extern crate's.
    bare: BTreeMap<ModulePath, BTreeSet<ModulePath>>,
}

impl CrateGraph {
    fn read() -> CrateGraph {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut graph = CrateGraph {
            modules: BTreeSet::new(),
            paths: BTreeMap::new(),
            bare: BTreeMap::new(),
        };
        for file in rust_files(&src) {
            let relative = file.strip_prefix(&src).expect("under src");
            let Some(module) = module_of(relative) else {
                continue;
            };
            let text = std::fs::read_to_string(&file).expect("read source");
            let parsed = syn::parse_file(&text)
                .unwrap_or_else(|err| panic!("{}: {err}", relative.display()));
            let mut scanner = Scanner::new(module.clone());
            scanner.visit_file(&parsed);
            graph.modules.insert(module.clone());
            graph.modules.extend(scanner.inline_modules);
            for (written_in, bare) in scanner.bare {
                graph.bare.entry(written_in).or_default().insert(bare);
            }
            graph.paths.entry(module).or_default().extend(scanner.paths);
        }
        graph
    }

    /// Module -> module edges: each path is charged to the longest existing module it
    /// starts with (the module that holds the named item).
    fn module_edges(&self) -> BTreeSet<(ModulePath, ModulePath)> {
        let mut absolute: BTreeMap<&ModulePath, BTreeSet<ModulePath>> = BTreeMap::new();
        for (from, paths) in &self.paths {
            absolute
                .entry(from)
                .or_default()
                .extend(paths.iter().cloned());
        }
        for (from, paths) in &self.bare {
            for path in paths {
                let mut local = from.clone();
                local.extend(path.iter().cloned());
                if self.modules.contains(&local[..from.len() + 1]) {
                    absolute.entry(from).or_default().insert(local);
                }
            }
        }
        let mut edges = BTreeSet::new();
        for (from, paths) in absolute {
            for path in &paths {
                let target = (1..=path.len())
                    .rev()
                    .map(|len| path[..len].to_vec())
                    .find(|prefix| self.modules.contains(prefix));
                if let Some(to) = target.filter(|to| to != from) {
                    edges.insert((from.clone(), to));
                }
            }
        }
        edges
    }
}

/// Collects the absolute paths a file writes, resolving `crate`, `self` and `super` against
/// the module each is written in.
struct Scanner {
    module: ModulePath,
    paths: BTreeSet<ModulePath>,
    /// (module written in, path) for paths that start with a plain name.
    bare: Vec<(ModulePath, ModulePath)>,
    inline_modules: Vec<ModulePath>,
}

impl Scanner {
    fn new(module: ModulePath) -> Scanner {
        Scanner {
            module,
            paths: BTreeSet::new(),
            bare: Vec::new(),
            inline_modules: Vec::new(),
        }
    }

    /// Resolves `segments` written in the current module to an absolute path, if it starts
    /// with `crate`, `self` or `super` (other paths name extern crates or local items).
    fn resolve(&self, segments: &[String]) -> Option<ModulePath> {
        let (first, rest) = segments.split_first()?;
        let mut base = match first.as_str() {
            "crate" => return Some(rest.to_vec()),
            "self" => self.module.clone(),
            "super" => self.module[..self.module.len().saturating_sub(1)].to_vec(),
            _ => return None,
        };
        let mut rest = rest;
        while let Some(("super", tail)) =
            rest.split_first().map(|(head, tail)| (head.as_str(), tail))
        {
            base.pop();
            rest = tail;
        }
        base.extend(rest.iter().cloned());
        Some(base)
    }

    fn record(&mut self, segments: &[String]) {
        match self.resolve(segments) {
            Some(path) if !path.is_empty() => {
                self.paths.insert(path);
            }
            Some(_) => {}
            // One plain segment is a local variable or an item in scope; `child::item` is
            // what can name a child module.
            None if segments.len() > 1 => self.bare.push((self.module.clone(), segments.to_vec())),
            None => {}
        }
    }

    fn walk_use(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(path) => {
                prefix.push(path.ident.to_string());
                self.walk_use(prefix, &path.tree);
                prefix.pop();
            }
            syn::UseTree::Name(name) => {
                let mut full = prefix.clone();
                if name.ident != "self" {
                    full.push(name.ident.to_string());
                }
                self.record(&full);
            }
            syn::UseTree::Rename(rename) => {
                let mut full = prefix.clone();
                full.push(rename.ident.to_string());
                self.record(&full);
            }
            syn::UseTree::Glob(_) => self.record(prefix),
            syn::UseTree::Group(group) => {
                for item in &group.items {
                    self.walk_use(prefix, item);
                }
            }
        }
    }
}

/// Whether the attributes put an item under `#[cfg(test)]` (alone or in `all(...)`).
fn test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("cfg")
            && matches!(&attr.meta, syn::Meta::List(list)
                if list.tokens.to_string().split(|c: char| !c.is_alphanumeric() && c != '_').any(|word| word == "test"))
    })
}

impl<'ast> Visit<'ast> for Scanner {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Const(item) => &item.attrs,
            syn::Item::Enum(item) => &item.attrs,
            syn::Item::Fn(item) => &item.attrs,
            syn::Item::Impl(item) => &item.attrs,
            syn::Item::Macro(item) => &item.attrs,
            syn::Item::Mod(item) => &item.attrs,
            syn::Item::Static(item) => &item.attrs,
            syn::Item::Struct(item) => &item.attrs,
            syn::Item::Trait(item) => &item.attrs,
            syn::Item::Type(item) => &item.attrs,
            syn::Item::Use(item) => &item.attrs,
            _ => return syn::visit::visit_item(self, item),
        };
        if !test_only(attrs) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_impl_item_fn(&mut self, item: &'ast syn::ImplItemFn) {
        if !test_only(&item.attrs) {
            syn::visit::visit_impl_item_fn(self, item);
        }
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        if let Some((_, items)) = &item.content {
            self.module.push(item.ident.to_string());
            self.inline_modules.push(self.module.clone());
            for inner in items {
                self.visit_item(inner);
            }
            self.module.pop();
        }
    }

    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {
        // `pub(super)` names who may see an item, not what it uses.
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.walk_use(&mut Vec::new(), &item.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path
            .segments
            .iter()
            .map(|segment| segment.ident.to_string())
            .collect();
        self.record(&segments);
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        // Macro arguments are tokens, not syntax: find `crate :: a :: b` runs in them.
        let text = mac.tokens.to_string();
        let words: Vec<&str> = text.split_whitespace().collect();
        for (at, word) in words.iter().enumerate() {
            if !matches!(*word, "crate" | "super" | "self") || words.get(at + 1) != Some(&"::") {
                continue;
            }
            let mut segments = vec![word.to_string()];
            let mut next = at + 2;
            while let Some(segment) = words.get(next) {
                if !segment.chars().all(|c| c.is_alphanumeric() || c == '_') {
                    break;
                }
                segments.push(segment.to_string());
                if words.get(next + 1) != Some(&"::") {
                    break;
                }
                next += 2;
            }
            self.record(&segments);
        }
        syn::visit::visit_macro(self, mac);
    }
}

/// The module a file is: `http/tls.rs` -> `["http", "tls"]`, `http/mod.rs` -> `["http"]`;
/// `None` for the crate root and the binary.
fn module_of(relative: &Path) -> Option<ModulePath> {
    let mut parts: Vec<String> = relative
        .with_extension("")
        .components()
        .map(|part| part.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|last| last == "mod") {
        parts.pop();
    }
    (!matches!(parts.as_slice(), [only] if only == "lib" || only == "main")).then_some(parts)
}

/// The strongly connected components with more than one module (Tarjan).
fn strongly_connected(edges: &BTreeSet<(ModulePath, ModulePath)>) -> Vec<Vec<ModulePath>> {
    let mut graph: BTreeMap<&ModulePath, Vec<&ModulePath>> = BTreeMap::new();
    for (from, to) in edges {
        graph.entry(from).or_default().push(to);
        graph.entry(to).or_default();
    }
    struct State<'a> {
        index: BTreeMap<&'a ModulePath, usize>,
        low: BTreeMap<&'a ModulePath, usize>,
        stack: Vec<&'a ModulePath>,
        on_stack: BTreeSet<&'a ModulePath>,
        next: usize,
        found: Vec<Vec<ModulePath>>,
    }
    fn visit<'a>(
        node: &'a ModulePath,
        graph: &BTreeMap<&'a ModulePath, Vec<&'a ModulePath>>,
        state: &mut State<'a>,
    ) {
        state.index.insert(node, state.next);
        state.low.insert(node, state.next);
        state.next += 1;
        state.stack.push(node);
        state.on_stack.insert(node);
        for &next in &graph[node] {
            if !state.index.contains_key(next) {
                visit(next, graph, state);
                let low = state.low[node].min(state.low[next]);
                state.low.insert(node, low);
            } else if state.on_stack.contains(next) {
                let low = state.low[node].min(state.index[next]);
                state.low.insert(node, low);
            }
        }
        if state.low[node] == state.index[node] {
            let mut component = Vec::new();
            while let Some(member) = state.stack.pop() {
                state.on_stack.remove(member);
                component.push(member.clone());
                if member == node {
                    break;
                }
            }
            if component.len() > 1 {
                state.found.push(component);
            }
        }
    }
    let mut state = State {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for node in graph.keys() {
        if !state.index.contains_key(node) {
            visit(node, &graph, &mut state);
        }
    }
    state.found
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

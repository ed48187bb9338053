//! Embeds the web dashboard (`web/dist`, built by `npm run build` in `web/`) into the server:
//! every file becomes a `&'static [u8]` with its content type, in `$OUT_DIR/dashboard.rs`.
//! When the dashboard was not built, one small page saying how to build it is embedded
//! instead, so a plain `cargo build` works without Node.js.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let web = manifest.join("../../web");
    let dist = web.join("dist");
    println!("cargo::rerun-if-env-changed=VMFLEET_DASHBOARD_DIST");
    let dist = std::env::var_os("VMFLEET_DASHBOARD_DIST").map_or(dist, PathBuf::from);

    let mut files = Vec::new();
    let built = dist.join("index.html").is_file();
    if built {
        println!("cargo::rerun-if-changed={}", dist.display());
        collect(&dist, &dist, &mut files);
    } else {
        // Watching web/ (sources, and dist/ once it appears) rebuilds this crate when the
        // dashboard gets built.
        println!("cargo::rerun-if-changed={}", web.display());
        let page = manifest.join("dashboard/not-built.html");
        println!("cargo::rerun-if-changed={}", page.display());
        files.push(("/index.html".to_owned(), page));
    }
    files.sort();

    let mut code = String::new();
    let _ = writeln!(
        code,
        "/// Whether `web/dist` was built when this binary was."
    );
    let _ = writeln!(code, "pub(crate) const BUILT: bool = {built};");
    let _ = writeln!(code, "/// The dashboard's files by URL path, sorted.");
    let _ = writeln!(code, "pub(crate) static ASSETS: &[Asset] = &[");
    for (url, file) in &files {
        let abs = file.canonicalize().unwrap_or_else(|_| file.clone());
        let _ = writeln!(
            code,
            "    Asset {{ path: {url:?}, content_type: {:?}, body: include_bytes!({:?}) }},",
            content_type(url),
            abs.display().to_string()
        );
    }
    let _ = writeln!(code, "];");
    std::fs::write(out.join("dashboard.rs"), code).expect("OUT_DIR is writable");
}

/// Every regular file under `dir`, as (`/relative/url/path`, file).
fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            collect(root, &path, files);
        } else if kind.is_file() {
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let url: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            files.push((format!("/{}", url.join("/")), path));
        }
    }
}

fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map_or("", |(_, e)| e);
    match ext {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "ttf" => "font/ttf",
        "txt" => "text/plain; charset=utf-8",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

//! The `file` capability: files in a sandbox folder, `[file] root`.
//!
//! | action     | parameters                                            | result |
//! |------------|-------------------------------------------------------|--------|
//! | `read`     | `path`, `encoding` (`auto`, `utf8`, `base64`), `object` | `{path, size, modified, encoding, content}` or `{…, object}` |
//! | `write`    | `path`, `content`, `encoding` (`utf8`, `base64`) or `object`, `overwrite`, `mkdirs` | `{path, size, sha256}` |
//! | `delete`   | `path`, `recursive`                                   | `{path, deleted}` |
//! | `list`     | `path` (`.`), `glob`, `recursive`                     | `{path, entries: [{path, kind, size, modified}], truncated}` |
//! | `compress` | `paths` (files, folders or globs), `format` (`zip`, `tar.gz`), `output` | `{output, format, entries, size, sha256}` |
//! | `extract`  | `path` (an archive), `output` (a folder), `format`, `overwrite` | `{output, entries, size}` |
//!
//! Every path is relative to the root. The sandbox is the operating system's,
//! not string checks: the root is opened once per task as a capability
//! (`cap-std`), and every file is reached through it, so a symlink that leads
//! out fails (`outside_sandbox`) wherever it sits in the path. Before that,
//! paths are refused by their form: absolute paths and `..` are
//! `outside_sandbox`; NUL bytes, names over 255 bytes and paths over 4096
//! bytes are `invalid_path`. Archive entries meet the same rules when
//! extracted, and their sizes are counted as they are written (a zip bomb
//! stops at `max_file_bytes`).
//!
//! Writes are atomic: the bytes go to a hidden temporary file in the same
//! folder, are synced, then renamed over the target. Large reads go to the
//! object store (`max_inline_bytes`); binary content travels as base64.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cap_std::fs::{Dir, OpenOptions};
use futures::future::BoxFuture;
use jetmesh_shared::capability::{Action, Call, Capability, params};
use jetmesh_shared::config::FileConfig;
use jetmesh_shared::{Error, ErrorCode, Mesh, objects};
use serde_json::{Map, Value, json};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

/// A path that leads out of the sandbox (absolute, `..`, a symlink out).
pub const OUTSIDE_SANDBOX: ErrorCode = ErrorCode::capability("outside_sandbox");
/// A path no file can have here: a NUL byte, a name over 255 bytes, a path
/// over 4096 bytes, or the root itself where a file is meant.
pub const INVALID_PATH: ErrorCode = ErrorCode::capability("invalid_path");
/// The target exists and `overwrite` is false.
pub const ALREADY_EXISTS: ErrorCode = ErrorCode::capability("already_exists");
/// A folder where a file is meant.
pub const NOT_A_FILE: ErrorCode = ErrorCode::capability("not_a_file");
/// A file where a folder is meant.
pub const NOT_A_DIRECTORY: ErrorCode = ErrorCode::capability("not_a_directory");
/// An archive that cannot be read, or holds an entry that may not be
/// extracted (a link, a device).
pub const BAD_ARCHIVE: ErrorCode = ErrorCode::capability("bad_archive");
/// A file that is not UTF-8 text, read with `encoding: "utf8"`.
pub const NOT_TEXT: ErrorCode = ErrorCode::capability("not_text");
/// Any other failure of the filesystem (a full disk, …).
pub const IO_ERROR: ErrorCode = ErrorCode::capability("io_error");

/// The longest path, and the longest name in it, in bytes (Linux's limits).
const MAX_PATH: usize = 4096;
const MAX_NAME: usize = 255;
/// Temporary files of atomic writes start with this; `list` hides them.
const TMP_PREFIX: &str = ".jetmesh-tmp-";

const ACTIONS: &[Action] = &[
    Action {
        name: "read",
        description: "Reads a file: text inline, binary as base64, large files as an object-store reference.",
        params: r#"{"type":"object","required":["path"],"additionalProperties":false,"properties":{"path":{"type":"string","minLength":1,"maxLength":4096,"description":"Relative to the sandbox root."},
  "encoding":{"enum":["auto","utf8","base64"],"description":"auto (default): utf8 when the bytes are text, else base64."},
  "object":{"type":"boolean","description":"Store the content in the object store and return a reference."}}}"#,
    },
    Action {
        name: "write",
        description: "Writes a file atomically (temporary file, then rename), from content or an object-store key.",
        params: r#"{"type":"object","required":["path"],"additionalProperties":false,"properties":{"path":{"type":"string","minLength":1,"maxLength":4096,"description":"Relative to the sandbox root."},
  "content":{"type":"string","description":"The bytes: text, or base64 with encoding base64."},
  "encoding":{"enum":["utf8","base64"],"description":"How content is written (default utf8)."},
  "object":{"type":"string","minLength":1,"description":"A key in mesh_objects to copy instead of content."},
  "overwrite":{"type":"boolean","description":"Replace an existing file (default true)."},
  "mkdirs":{"type":"boolean","description":"Create missing parent folders (default true)."}},
  "oneOf":[{"required":["content"]},{"required":["object"]}]}"#,
    },
    Action {
        name: "delete",
        description: "Deletes a file, or a folder (with recursive for one that is not empty).",
        params: r#"{"type":"object","required":["path"],"additionalProperties":false,"properties":{"path":{"type":"string","minLength":1,"maxLength":4096,"description":"Relative to the sandbox root."},
  "recursive":{"type":"boolean","description":"Delete a folder and everything in it (default false)."}}}"#,
    },
    Action {
        name: "list",
        description: "Lists a folder: path, kind, size and modification time of each entry, optionally filtered by a glob.",
        params: r#"{"type":"object","additionalProperties":false,"properties":{
  "path":{"type":"string","minLength":1,"maxLength":4096,"description":"The folder, relative to the root (default .)."},
  "glob":{"type":"string","minLength":1,"maxLength":1024,"description":"Keep entries whose path below the folder matches, like *.txt or **/*.md."},
  "recursive":{"type":"boolean","description":"Descend into subfolders (default: when glob has a / or **)."}}}"#,
    },
    Action {
        name: "compress",
        description: "Packs files, folders or globs into a zip or tar.gz archive inside the sandbox.",
        params: r#"{"type":"object","required":["paths","output"],"additionalProperties":false,"properties":{
  "paths":{"type":"array","minItems":1,"maxItems":1000,"items":{"type":"string","minLength":1,"maxLength":4096},
           "description":"Files, folders (with everything below) or globs like docs/**/*.md."},
  "format":{"enum":["zip","tar.gz"],"description":"Default: from the output's extension."},
  "output":{"type":"string","minLength":1,"maxLength":4096,"description":"The archive to write, relative to the root."}}}"#,
    },
    Action {
        name: "extract",
        description: "Unpacks a zip or tar.gz archive into a folder of the sandbox, refusing entries that lead out.",
        params: r#"{"type":"object","required":["path"],"additionalProperties":false,"properties":{"path":{"type":"string","minLength":1,"maxLength":4096,"description":"Relative to the sandbox root."},
  "output":{"type":"string","minLength":1,"maxLength":4096,"description":"The folder to unpack into (default: the archive's name without extension)."},
  "format":{"enum":["zip","tar.gz"],"description":"Default: from the archive's extension."},
  "overwrite":{"type":"boolean","description":"Replace existing files (default false)."}}}"#,
    },
];

/// The built-in `file` capability.
pub struct File {
    mesh: Mesh,
    cfg: FileConfig,
}

impl File {
    pub fn new(mesh: Mesh) -> File {
        File {
            cfg: mesh.config.file.clone(),
            mesh,
        }
    }
}

impl Capability for File {
    fn name(&self) -> &'static str {
        "file"
    }

    fn actions(&self) -> &'static [Action] {
        ACTIONS
    }

    fn execute<'a>(&'a self, call: Call<'a>) -> BoxFuture<'a, Result<Value, Error>> {
        Box::pin(async move {
            let p = call.params;
            match call.action {
                "read" => self.read(&call).await,
                "write" => self.write(p).await,
                "delete" => {
                    let (cfg, p) = (self.cfg.clone(), p.clone());
                    blocking(move || delete(&cfg, &p)).await
                }
                "list" => {
                    let (cfg, p) = (self.cfg.clone(), p.clone());
                    blocking(move || list(&cfg, &p)).await
                }
                "compress" => {
                    let (cfg, p) = (self.cfg.clone(), p.clone());
                    blocking(move || compress(&cfg, &p)).await
                }
                "extract" => {
                    let (cfg, p) = (self.cfg.clone(), p.clone());
                    blocking(move || extract(&cfg, &p)).await
                }
                other => Err(Error::new(
                    ErrorCode::UnknownAction,
                    format!("file has no action {other:?}"),
                )),
            }
        })
    }
}

/// Runs filesystem work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::new(ErrorCode::Internal, format!("a file task failed: {e}")))?
}

impl File {
    async fn read(&self, call: &Call<'_>) -> Result<Value, Error> {
        let p = call.params.clone();
        let cfg = self.cfg.clone();
        let (path, bytes, modified) = blocking(move || {
            let path = params::str(&p, "path")?;
            let rel = rel(path)?;
            let root = root(&cfg)?;
            let meta = root.metadata(&rel).map_err(|e| io_error(e, path))?;
            if meta.is_dir() {
                return Err(Error::new(
                    NOT_A_FILE,
                    format!("{path} is a folder; list it instead"),
                ));
            }
            if meta.len() > cfg.max_file_bytes {
                return Err(too_large(path, meta.len(), cfg.max_file_bytes));
            }
            let mut f = root.open(&rel).map_err(|e| io_error(e, path))?;
            let mut bytes = Vec::with_capacity(meta.len() as usize);
            (&mut f)
                .take(cfg.max_file_bytes + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| io_error(e, path))?;
            if bytes.len() as u64 > cfg.max_file_bytes {
                return Err(too_large(path, bytes.len() as u64, cfg.max_file_bytes));
            }
            Ok((
                path.to_string(),
                bytes,
                time(meta.modified().ok().map(|t| t.into_std())),
            ))
        })
        .await?;
        let p = call.params;
        let encoding = params::opt_str(p, "encoding")?.unwrap_or("auto");
        let to_object = params::opt_bool(p, "object")?.unwrap_or(false);
        let mut out = json!({"path": path, "size": bytes.len(), "modified": modified});
        if to_object || bytes.len() as u64 > self.cfg.max_inline_bytes {
            let name = Path::new(&path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "file".into());
            let key = self
                .mesh
                .names
                .object_key(call.plan_id, call.task_id, &name);
            let content_type = if std::str::from_utf8(&bytes).is_ok() {
                "text/plain; charset=utf-8"
            } else {
                "application/octet-stream"
            };
            out["object"] =
                serde_json::to_value(objects::put(&self.mesh, &key, content_type, &bytes).await?)
                    .expect("a reference serializes");
            return Ok(out);
        }
        let (encoding, content) = match (encoding, String::from_utf8(bytes)) {
            ("auto" | "utf8", Ok(text)) => ("utf8", text),
            ("utf8", Err(_)) => {
                return Err(Error::new(
                    NOT_TEXT,
                    format!("{path} is not UTF-8 text; read it with encoding base64"),
                ));
            }
            (_, Ok(text)) => ("base64", B64.encode(text.as_bytes())),
            (_, Err(e)) => ("base64", B64.encode(e.as_bytes())),
        };
        out["encoding"] = json!(encoding);
        out["content"] = json!(content);
        Ok(out)
    }

    async fn write(&self, p: &Map<String, Value>) -> Result<Value, Error> {
        let bytes = match (p.get("content"), params::opt_str(p, "object")?) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid_args(
                    "write takes content or object, not both",
                ));
            }
            (None, None) => return Err(Error::invalid_args("write needs content (or object)")),
            (Some(_), None) => {
                let content = params::str(p, "content")?;
                match params::opt_str(p, "encoding")?.unwrap_or("utf8") {
                    "utf8" => content.as_bytes().to_vec(),
                    "base64" => B64.decode(content.trim()).map_err(|e| {
                        Error::invalid_args(format!("content is not valid base64: {e}"))
                    })?,
                    other => {
                        return Err(Error::invalid_args(format!(
                            "encoding must be utf8 or base64, not {other:?}"
                        )));
                    }
                }
            }
            (None, Some(key)) => objects::get(&self.mesh, key).await?.1,
        };
        let (cfg, p) = (self.cfg.clone(), p.clone());
        blocking(move || {
            let path = params::str(&p, "path")?;
            let rel = rel(path)?;
            if bytes.len() as u64 > cfg.max_file_bytes {
                return Err(too_large(path, bytes.len() as u64, cfg.max_file_bytes));
            }
            let overwrite = params::opt_bool(&p, "overwrite")?.unwrap_or(true);
            let mkdirs = params::opt_bool(&p, "mkdirs")?.unwrap_or(true);
            let root = root(&cfg)?;
            let sha256 = write_atomic(&root, &rel, path, &bytes, overwrite, mkdirs)?;
            Ok(json!({"path": path, "size": bytes.len(), "sha256": sha256}))
        })
        .await
    }
}

/// Writes `bytes` to `rel` atomically: a hidden temporary file in the same
/// folder, synced, then renamed over the target. Returns the SHA-256.
fn write_atomic(
    root: &Dir,
    rel: &Path,
    shown: &str,
    bytes: &[u8],
    overwrite: bool,
    mkdirs: bool,
) -> Result<String, Error> {
    let (dir, name) = parent_and_name(root, rel, shown, mkdirs)?;
    match dir.symlink_metadata(&name) {
        Ok(m) if m.is_dir() => {
            return Err(Error::new(NOT_A_FILE, format!("{shown} is a folder")));
        }
        Ok(_) if !overwrite => {
            return Err(Error::new(
                ALREADY_EXISTS,
                format!("{shown} exists (overwrite is false)"),
            ));
        }
        _ => {}
    }
    let tmp = format!("{TMP_PREFIX}{}", uuid_like());
    let written = (|| -> io::Result<()> {
        let mut f = dir.open_with(&tmp, OpenOptions::new().write(true).create_new(true))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        dir.rename(&tmp, &dir, &name)
    })();
    if let Err(e) = written {
        let _ = dir.remove_file(&tmp);
        return Err(io_error(e, shown));
    }
    Ok(objects::sha256_hex(bytes))
}

/// A name for a temporary file that no other writer picks.
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    )
}

/// The folder holding `rel` (created when `mkdirs`) and the file's name.
fn parent_and_name(
    root: &Dir,
    rel: &Path,
    shown: &str,
    mkdirs: bool,
) -> Result<(Dir, String), Error> {
    let name = rel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            Error::new(
                INVALID_PATH,
                format!("{shown:?} names the root, not a file"),
            )
        })?;
    let dir = open_dir(root, rel.parent().unwrap_or(Path::new("")), shown, mkdirs)?;
    Ok((dir, name))
}

/// The folder `rel` (the root itself when empty), created when missing and
/// `create`. An existing path is opened first, so a symlink that leads out
/// is refused rather than taken for a folder.
fn open_dir(root: &Dir, rel: &Path, shown: &str, create: bool) -> Result<Dir, Error> {
    if rel.as_os_str().is_empty() {
        return root.try_clone().map_err(|e| io_error(e, shown));
    }
    match root.open_dir(rel) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
            root.create_dir_all(rel).map_err(|e| io_error(e, shown))?;
            root.open_dir(rel).map_err(|e| io_error(e, shown))
        }
        opened => opened.map_err(|e| io_error(e, shown)),
    }
}

fn delete(cfg: &FileConfig, p: &Map<String, Value>) -> Result<Value, Error> {
    let path = params::str(p, "path")?;
    let rel = rel(path)?;
    if rel.as_os_str().is_empty() {
        return Err(Error::new(
            INVALID_PATH,
            "the root itself cannot be deleted",
        ));
    }
    let recursive = params::opt_bool(p, "recursive")?.unwrap_or(false);
    let root = root(cfg)?;
    let meta = root.symlink_metadata(&rel).map_err(|e| io_error(e, path))?;
    let kind = if meta.is_dir() {
        if recursive {
            root.remove_dir_all(&rel)
        } else {
            root.remove_dir(&rel)
        }
        .map_err(|e| match e.kind() {
            io::ErrorKind::DirectoryNotEmpty => Error::new(
                ALREADY_EXISTS,
                format!("{path} is a folder that is not empty; delete it with recursive: true"),
            ),
            _ => io_error(e, path),
        })?;
        "directory"
    } else {
        // A symlink is removed itself, never what it points to.
        root.remove_file(&rel).map_err(|e| io_error(e, path))?;
        "file"
    };
    Ok(json!({"path": path, "deleted": kind}))
}

/// One entry found by [`walk`].
struct Entry {
    /// Relative to the root, with `/`.
    path: String,
    /// Relative to the folder walked.
    below: String,
    kind: &'static str,
    size: u64,
    modified: Option<String>,
}

/// The entries under `rel` (descending when `recursive`, never through
/// symlinks), at most `max` of them; the bool says some were left out.
fn walk(
    root: &Dir,
    rel: &Path,
    shown: &str,
    recursive: bool,
    max: usize,
    keep: &dyn Fn(&Entry) -> bool,
) -> Result<(Vec<Entry>, bool), Error> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    let mut truncated = false;
    while let Some(below) = stack.pop() {
        let dir_rel = rel.join(&below);
        let read = if dir_rel.as_os_str().is_empty() {
            root.entries()
        } else {
            root.read_dir(&dir_rel)
        }
        .map_err(|e| io_error(e, shown))?;
        let mut names = Vec::new();
        for entry in read {
            let entry = entry.map_err(|e| io_error(e, shown))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        for name in names {
            if name.starts_with(TMP_PREFIX) {
                continue;
            }
            let below_path = below.join(&name);
            let full = rel.join(&below_path);
            let Ok(meta) = root.symlink_metadata(&full) else {
                continue; // gone meanwhile
            };
            let kind = if meta.is_symlink() {
                "symlink"
            } else if meta.is_dir() {
                "directory"
            } else {
                "file"
            };
            let e = Entry {
                path: slash(&full),
                below: slash(&below_path),
                kind,
                size: if meta.is_file() { meta.len() } else { 0 },
                modified: time(meta.modified().ok().map(|t| t.into_std())),
            };
            if recursive && kind == "directory" {
                stack.push(below_path);
            }
            if keep(&e) {
                if out.len() == max {
                    truncated = true;
                    return Ok((out, truncated));
                }
                out.push(e);
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((out, truncated))
}

fn list(cfg: &FileConfig, p: &Map<String, Value>) -> Result<Value, Error> {
    let path = params::opt_str(p, "path")?.unwrap_or(".");
    let rel = rel(path)?;
    let glob = params::opt_str(p, "glob")?;
    let recursive = params::opt_bool(p, "recursive")?
        .unwrap_or_else(|| glob.is_some_and(|g| g.contains('/') || g.contains("**")));
    let matcher = glob.map(compile_glob).transpose()?;
    let root = root(cfg)?;
    if !rel.as_os_str().is_empty() {
        let meta = root.metadata(&rel).map_err(|e| io_error(e, path))?;
        if !meta.is_dir() {
            return Err(Error::new(
                NOT_A_DIRECTORY,
                format!("{path} is a file; read it instead"),
            ));
        }
    }
    let keep = |e: &Entry| matcher.as_ref().is_none_or(|m| m.is_match(&e.below));
    let (entries, truncated) = walk(&root, &rel, path, recursive, cfg.max_entries, &keep)?;
    let entries: Vec<Value> = entries
        .into_iter()
        .map(|e| json!({"path": e.path, "kind": e.kind, "size": e.size, "modified": e.modified}))
        .collect();
    Ok(json!({"path": path, "entries": entries, "truncated": truncated}))
}

fn compile_glob(g: &str) -> Result<globset::GlobMatcher, Error> {
    globset::GlobBuilder::new(g)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| Error::invalid_args(format!("glob {g:?}: {e}")))
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '[', '{'])
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Zip,
    TarGz,
}

impl Format {
    fn of(p: &Map<String, Value>, path: &str) -> Result<Format, Error> {
        match params::opt_str(p, "format")? {
            Some("zip") => Ok(Format::Zip),
            Some("tar.gz") => Ok(Format::TarGz),
            Some(other) => Err(Error::invalid_args(format!(
                "format must be zip or tar.gz, not {other:?}"
            ))),
            None if path.ends_with(".zip") => Ok(Format::Zip),
            None if path.ends_with(".tar.gz") || path.ends_with(".tgz") => Ok(Format::TarGz),
            None => Err(Error::invalid_args(format!(
                "give format (zip or tar.gz): {path:?} does not end in .zip, .tar.gz or .tgz"
            ))),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Zip => "zip",
            Format::TarGz => "tar.gz",
        }
    }
}

fn compress(cfg: &FileConfig, p: &Map<String, Value>) -> Result<Value, Error> {
    let output = params::str(p, "output")?;
    let out_rel = rel(output)?;
    let format = Format::of(p, output)?;
    let paths: Vec<&str> = match p.get("paths") {
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| Error::invalid_args("paths must be a list of strings"))
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(Error::invalid_args(
                "paths must be a non-empty list of paths or globs",
            ));
        }
    };
    let root = root(cfg)?;
    // The files to pack, by path relative to the root, each once.
    let mut files = std::collections::BTreeSet::new();
    let out_path = slash(&out_rel);
    for given in &paths {
        if is_glob(given) {
            // The glob's literal leading folders are walked, not the whole root.
            if given.starts_with('/') || given.split('/').any(|c| c == "..") {
                return Err(Error::new(
                    OUTSIDE_SANDBOX,
                    format!("{given:?} leads out of the sandbox"),
                ));
            }
            let m = compile_glob(given)?;
            let keep = |e: &Entry| e.kind == "file" && m.is_match(&e.path);
            let (found, _) = walk(
                &root,
                Path::new(""),
                given,
                true,
                cfg.max_entries + 1,
                &keep,
            )?;
            files.extend(found.into_iter().map(|e| e.path));
        } else {
            let r = rel(given)?;
            let meta = root.symlink_metadata(&r).map_err(|e| io_error(e, given))?;
            if meta.is_dir() {
                let keep = |e: &Entry| e.kind == "file";
                let (found, _) = walk(&root, &r, given, true, cfg.max_entries + 1, &keep)?;
                files.extend(found.into_iter().map(|e| e.path));
            } else if meta.is_file() {
                files.insert(slash(&r));
            } else {
                return Err(Error::new(
                    NOT_A_FILE,
                    format!("{given} is a symlink; archives hold files and folders"),
                ));
            }
        }
        if files.len() > cfg.max_entries {
            return Err(Error::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "more than {} files to pack (file.max_entries)",
                    cfg.max_entries
                ),
            ));
        }
    }
    files.remove(&out_path);
    if files.is_empty() {
        return Err(Error::new(ErrorCode::NotFound, "no file matches paths"));
    }
    let (dir, name) = parent_and_name(&root, &out_rel, output, true)?;
    let tmp = format!("{TMP_PREFIX}{}", uuid_like());
    let written = (|| -> Result<u64, Error> {
        let file = dir
            .open_with(
                &tmp,
                OpenOptions::new().write(true).read(true).create_new(true),
            )
            .map_err(|e| io_error(e, output))?
            .into_std();
        let mut total = 0u64;
        let mut add = |path: &str, sink: &mut Sink<'_>| -> Result<(), Error> {
            let f = root.open(path).map_err(|e| io_error(e, path))?;
            let mode = f.metadata().map(|m| permissions(&m)).unwrap_or(0o644);
            let mut bytes = Vec::new();
            f.take(cfg.max_file_bytes.saturating_sub(total) + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| io_error(e, path))?;
            total += bytes.len() as u64;
            if total > cfg.max_file_bytes {
                return Err(too_large(
                    "the archive's content",
                    total,
                    cfg.max_file_bytes,
                ));
            }
            sink(path, &bytes, mode)
        };
        let bad =
            |e: &dyn std::fmt::Display| Error::new(IO_ERROR, format!("cannot write {output}: {e}"));
        let file = match format {
            Format::Zip => {
                let mut zip = zip::ZipWriter::new(file);
                for path in &files {
                    add(path, &mut |name, bytes, mode| {
                        let opts = zip::write::SimpleFileOptions::default()
                            .compression_method(zip::CompressionMethod::Deflated)
                            .unix_permissions(mode)
                            .large_file(bytes.len() as u64 >= u32::MAX as u64);
                        zip.start_file(name, opts).map_err(|e| bad(&e))?;
                        zip.write_all(bytes).map_err(|e| bad(&e))
                    })?;
                }
                zip.finish().map_err(|e| bad(&e))?
            }
            Format::TarGz => {
                let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
                let mut tar = tar::Builder::new(gz);
                for path in &files {
                    add(path, &mut |name, bytes, mode| {
                        let mut h = tar::Header::new_gnu();
                        h.set_size(bytes.len() as u64);
                        h.set_mode(mode);
                        h.set_mtime(
                            std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map(|d| d.as_secs())
                                .unwrap_or(0),
                        );
                        tar.append_data(&mut h, name, bytes).map_err(|e| bad(&e))
                    })?;
                }
                tar.into_inner()
                    .and_then(|gz| gz.finish())
                    .map_err(|e| bad(&e))?
            }
        };
        file.sync_all().map_err(|e| io_error(e, output))?;
        Ok(total)
    })();
    if let Err(e) = written {
        let _ = dir.remove_file(&tmp);
        return Err(e);
    }
    dir.rename(&tmp, &dir, &name).map_err(|e| {
        let _ = dir.remove_file(&tmp);
        io_error(e, output)
    })?;
    let mut bytes = Vec::new();
    root.open(&out_rel)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| io_error(e, output))?;
    Ok(json!({
        "output": output,
        "format": format.name(),
        "entries": files.len(),
        "size": bytes.len(),
        "sha256": objects::sha256_hex(&bytes),
    }))
}

/// Where `compress` puts one file: its name, bytes and mode.
type Sink<'a> = dyn FnMut(&str, &[u8], u32) -> Result<(), Error> + 'a;

fn permissions(m: &cap_std::fs::Metadata) -> u32 {
    use cap_std::fs::PermissionsExt;
    m.permissions().mode() & 0o777
}

fn extract(cfg: &FileConfig, p: &Map<String, Value>) -> Result<Value, Error> {
    let path = params::str(p, "path")?;
    let rel_archive = rel(path)?;
    let format = Format::of(p, path)?;
    let output = match params::opt_str(p, "output")? {
        Some(o) => o.to_string(),
        None => {
            let s = slash(&rel_archive);
            s.strip_suffix(".zip")
                .or_else(|| s.strip_suffix(".tar.gz"))
                .or_else(|| s.strip_suffix(".tgz"))
                .map(str::to_string)
                .ok_or_else(|| Error::invalid_args("give output, the folder to unpack into"))?
        }
    };
    let out_rel = rel(&output)?;
    let overwrite = params::opt_bool(p, "overwrite")?.unwrap_or(false);
    let root = root(cfg)?;
    let archive = root
        .open(&rel_archive)
        .map_err(|e| io_error(e, path))?
        .into_std();
    let out = open_dir(&root, &out_rel, &output, true)?;
    let bad = |e: &dyn std::fmt::Display| Error::new(BAD_ARCHIVE, format!("{path}: {e}"));
    let mut total = 0u64;
    let mut entries = 0usize;
    // One entry: its name checked like any path, its bytes counted as written.
    let mut put = |name: &str, is_dir: bool, reader: &mut dyn Read| -> Result<(), Error> {
        entries += 1;
        if entries > cfg.max_entries {
            return Err(Error::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "{path} has more than {} entries (file.max_entries)",
                    cfg.max_entries
                ),
            ));
        }
        let r = rel(name)
            .map_err(|e| Error::new(e.code, format!("{path}: entry {name:?}: {}", e.message)))?;
        if r.as_os_str().is_empty() {
            return Ok(());
        }
        if is_dir {
            return out.create_dir_all(&r).map_err(|e| io_error(e, name));
        }
        let mut bytes = Vec::new();
        reader
            .take(cfg.max_file_bytes.saturating_sub(total) + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| bad(&e))?;
        total += bytes.len() as u64;
        if total > cfg.max_file_bytes {
            return Err(too_large(
                &format!("{path} unpacked"),
                total,
                cfg.max_file_bytes,
            ));
        }
        write_atomic(&out, &r, name, &bytes, overwrite, true).map(|_| ())
    };
    match format {
        Format::Zip => {
            let mut zip = zip::ZipArchive::new(archive).map_err(|e| bad(&e))?;
            for i in 0..zip.len() {
                let mut f = zip.by_index(i).map_err(|e| bad(&e))?;
                let name = f.name().map_err(|e| bad(&e))?.into_owned();
                if f.is_symlink() {
                    return Err(Error::new(
                        BAD_ARCHIVE,
                        format!("{path}: entry {name:?} is a symlink; links are not extracted"),
                    ));
                }
                let is_dir = f.is_dir();
                put(&name, is_dir, &mut f)?;
            }
        }
        Format::TarGz => {
            let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
            for entry in tar.entries().map_err(|e| bad(&e))? {
                let mut entry = entry.map_err(|e| bad(&e))?;
                let name = entry
                    .path()
                    .map_err(|e| bad(&e))?
                    .to_string_lossy()
                    .into_owned();
                let kind = entry.header().entry_type();
                if !(kind.is_file() || kind.is_dir()) {
                    return Err(Error::new(
                        BAD_ARCHIVE,
                        format!(
                            "{path}: entry {name:?} is a {kind:?}; only files and folders are extracted"
                        ),
                    ));
                }
                put(&name, kind.is_dir(), &mut entry)?;
            }
        }
    }
    Ok(json!({"output": output, "entries": entries, "size": total}))
}

/// Opens the sandbox root, creating it on first use.
fn root(cfg: &FileConfig) -> Result<Dir, Error> {
    std::fs::create_dir_all(&cfg.root).map_err(|e| {
        Error::new(
            IO_ERROR,
            format!("cannot create the sandbox root {}: {e}", cfg.root.display()),
        )
    })?;
    Dir::open_ambient_dir(&cfg.root, cap_std::ambient_authority()).map_err(|e| {
        Error::new(
            IO_ERROR,
            format!("cannot open the sandbox root {}: {e}", cfg.root.display()),
        )
    })
}

/// A task's path, checked by its form and made relative (`.` and empty
/// parts dropped; empty for the root itself).
fn rel(path: &str) -> Result<PathBuf, Error> {
    if path.contains('\0') {
        return Err(Error::new(
            INVALID_PATH,
            "a path may not contain a NUL byte",
        ));
    }
    if path.len() > MAX_PATH {
        return Err(Error::new(
            INVALID_PATH,
            format!(
                "a path is at most {MAX_PATH} bytes; this one has {}",
                path.len()
            ),
        ));
    }
    if path.is_empty() {
        return Err(Error::new(
            INVALID_PATH,
            "the path is empty; use . for the root",
        ));
    }
    let p = Path::new(path);
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(name) => {
                if name.len() > MAX_NAME {
                    return Err(Error::new(
                        INVALID_PATH,
                        format!(
                            "a name is at most {MAX_NAME} bytes; one in {path:?} has {}",
                            name.len()
                        ),
                    ));
                }
                out.push(name);
            }
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(Error::new(
                    OUTSIDE_SANDBOX,
                    format!("{path:?}: .. is not allowed; paths stay inside the sandbox root"),
                ));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(Error::new(
                    OUTSIDE_SANDBOX,
                    format!("{path:?} is absolute; paths are relative to the sandbox root"),
                ));
            }
        }
    }
    Ok(out)
}

/// What an I/O error means to the caller, with a stable code.
fn io_error(e: io::Error, path: &str) -> Error {
    let code = match e.kind() {
        io::ErrorKind::NotFound => ErrorCode::NotFound,
        // cap-std's refusal of a path (a symlink, `..`) that leads out.
        io::ErrorKind::PermissionDenied if e.to_string().contains("outside") => OUTSIDE_SANDBOX,
        io::ErrorKind::AlreadyExists => ALREADY_EXISTS,
        io::ErrorKind::IsADirectory => NOT_A_FILE,
        io::ErrorKind::NotADirectory => NOT_A_DIRECTORY,
        io::ErrorKind::InvalidFilename | io::ErrorKind::InvalidInput => INVALID_PATH,
        _ => IO_ERROR,
    };
    let what = if code == ErrorCode::NotFound {
        "does not exist".to_string()
    } else if code == OUTSIDE_SANDBOX {
        "leads outside the sandbox root (through a symlink)".to_string()
    } else {
        e.to_string()
    };
    Error::new(code, format!("{path}: {what}"))
}

fn too_large(what: &str, size: u64, limit: u64) -> Error {
    Error::new(
        ErrorCode::PayloadTooLarge,
        format!("{what} is {size} bytes or more, over file.max_file_bytes ({limit})"),
    )
}

fn slash(p: &Path) -> String {
    p.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

fn time(t: Option<std::time::SystemTime>) -> Option<String> {
    t.and_then(|t| jiff::Timestamp::try_from(t).ok())
        .map(|t| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path) -> FileConfig {
        FileConfig {
            root: dir.join("root"),
            ..FileConfig::default()
        }
    }

    fn params(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn paths_are_refused_by_their_form() {
        let code = |p: &str| rel(p).unwrap_err().code;
        assert_eq!(code("../x"), OUTSIDE_SANDBOX);
        assert_eq!(code("a/../../x"), OUTSIDE_SANDBOX);
        assert_eq!(code("a/.."), OUTSIDE_SANDBOX);
        assert_eq!(code("/etc/passwd"), OUTSIDE_SANDBOX);
        assert_eq!(code("a\0b"), INVALID_PATH);
        assert_eq!(code(""), INVALID_PATH);
        assert_eq!(code(&"n".repeat(256)), INVALID_PATH);
        assert_eq!(code(&"a/".repeat(2100)), INVALID_PATH);
        assert_eq!(rel("./a//b/./c").unwrap(), Path::new("a/b/c"));
        assert_eq!(rel(".").unwrap(), Path::new(""));
    }

    #[test]
    fn symlinks_that_lead_out_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = cfg(tmp.path());
        let root = root(&cfg).unwrap();
        std::fs::write(tmp.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(tmp.path(), cfg.root.join("out")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret"), cfg.root.join("pw")).unwrap();
        std::os::unix::fs::symlink("../secret", cfg.root.join("rel")).unwrap();
        for path in ["out/secret", "pw", "rel"] {
            let e = io_error(root.open(path).unwrap_err(), path);
            assert_eq!(e.code, OUTSIDE_SANDBOX, "{path}: {e}");
        }
        // Writing through a symlinked folder is refused too, and writes nothing.
        let e = write_atomic(&root, Path::new("out/new"), "out/new", b"x", true, true).unwrap_err();
        assert_eq!(e.code, OUTSIDE_SANDBOX, "{e}");
        assert!(!tmp.path().join("new").exists());
        // Listing shows the links as links, without following them.
        let l = list(&cfg, &params(json!({"recursive": true}))).unwrap();
        let kinds: Vec<&str> = l["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["symlink", "symlink", "symlink"], "{l}");
        // Deleting a link removes the link, not its target.
        delete(&cfg, &params(json!({"path": "pw"}))).unwrap();
        assert!(tmp.path().join("secret").exists());
    }

    #[test]
    fn writes_are_atomic_and_respect_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = cfg(tmp.path());
        let root = root(&cfg).unwrap();
        write_atomic(
            &root,
            Path::new("d/e/f.txt"),
            "d/e/f.txt",
            b"one",
            true,
            true,
        )
        .unwrap();
        let e = write_atomic(
            &root,
            Path::new("d/e/f.txt"),
            "d/e/f.txt",
            b"two",
            false,
            true,
        )
        .unwrap_err();
        assert_eq!(e.code, ALREADY_EXISTS);
        write_atomic(
            &root,
            Path::new("d/e/f.txt"),
            "d/e/f.txt",
            b"two",
            true,
            true,
        )
        .unwrap();
        assert_eq!(std::fs::read(cfg.root.join("d/e/f.txt")).unwrap(), b"two");
        let e = write_atomic(&root, Path::new("x/y"), "x/y", b"", true, false).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound, "{e}");
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(cfg.root.join("d/e")).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn compress_and_extract_round_trip_in_both_formats() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = cfg(tmp.path());
        let root = root(&cfg).unwrap();
        for (p, b) in [
            ("docs/a.md", "# A"),
            ("docs/sub/b.md", "# B"),
            ("docs/c.txt", "c"),
        ] {
            write_atomic(&root, Path::new(p), p, b.as_bytes(), true, true).unwrap();
        }
        for out in ["out/docs.zip", "out/docs.tar.gz"] {
            let r = compress(
                &cfg,
                &params(json!({"paths": ["docs/**/*.md", "docs/c.txt"], "output": out})),
            )
            .unwrap();
            assert_eq!(r["entries"], 3, "{r}");
            let dest = format!("{out}.d");
            let r = extract(&cfg, &params(json!({"path": out, "output": dest}))).unwrap();
            assert_eq!(r["entries"], 3, "{r}");
            assert_eq!(
                std::fs::read_to_string(cfg.root.join(&dest).join("docs/sub/b.md")).unwrap(),
                "# B"
            );
            // Again: the files exist, and overwrite is false by default.
            let e = extract(&cfg, &params(json!({"path": out, "output": dest}))).unwrap_err();
            assert_eq!(e.code, ALREADY_EXISTS, "{e}");
        }
        let l = list(&cfg, &params(json!({"path": "docs", "glob": "**/*.md"}))).unwrap();
        let paths: Vec<&str> = l["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["path"].as_str().unwrap())
            .collect();
        assert_eq!(paths, ["docs/a.md", "docs/sub/b.md"], "{l}");
    }

    #[test]
    fn hostile_archives_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = cfg(tmp.path());
        let root = root(&cfg).unwrap();
        // Zip slip: an entry named ../evil.
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        zip.start_file("../evil", zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(b"x").unwrap();
        let bytes = zip.finish().unwrap().into_inner();
        write_atomic(&root, Path::new("slip.zip"), "slip.zip", &bytes, true, true).unwrap();
        let e = extract(&cfg, &params(json!({"path": "slip.zip", "output": "x"}))).unwrap_err();
        assert_eq!(e.code, OUTSIDE_SANDBOX, "{e}");
        assert!(!cfg.root.join("evil").exists() && !tmp.path().join("evil").exists());
        // A tar with a symlink entry.
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "link", "/etc/passwd").unwrap();
        let bytes = b.into_inner().unwrap().finish().unwrap();
        write_atomic(
            &root,
            Path::new("link.tar.gz"),
            "link.tar.gz",
            &bytes,
            true,
            true,
        )
        .unwrap();
        let e = extract(&cfg, &params(json!({"path": "link.tar.gz"}))).unwrap_err();
        assert_eq!(e.code, BAD_ARCHIVE, "{e}");
        // A bomb: 8 MiB of zeros, unpacked under a 1 MiB limit, stops there.
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        zip.start_file(
            "zeros",
            zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated),
        )
        .unwrap();
        zip.write_all(&vec![0u8; 8 << 20]).unwrap();
        let bytes = zip.finish().unwrap().into_inner();
        assert!(bytes.len() < 64 << 10);
        write_atomic(&root, Path::new("bomb.zip"), "bomb.zip", &bytes, true, true).unwrap();
        cfg.max_file_bytes = 1 << 20;
        let e = extract(&cfg, &params(json!({"path": "bomb.zip"}))).unwrap_err();
        assert_eq!(e.code, ErrorCode::PayloadTooLarge, "{e}");
        assert!(!cfg.root.join("bomb/zeros").exists());
        // Garbage is bad_archive.
        write_atomic(
            &root,
            Path::new("junk.zip"),
            "junk.zip",
            b"not a zip",
            true,
            true,
        )
        .unwrap();
        let e = extract(&cfg, &params(json!({"path": "junk.zip"}))).unwrap_err();
        assert_eq!(e.code, BAD_ARCHIVE, "{e}");
    }

    #[test]
    fn schemas_compile_and_name_unknown_parameters() {
        let r = jetmesh_shared::capability::registered(&Schemas).unwrap();
        let e = r
            .check_params("t", "read", &params(json!({"path": "a", "selector": "x"})))
            .unwrap_err();
        assert!(e.message.contains("\"selector\" is not a parameter"), "{e}");
        let e = r
            .check_params("t", "write", &params(json!({"path": "a"})))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgs);
        r.check_params("t", "write", &params(json!({"path": "a", "content": "x"})))
            .unwrap();
        r.check_params(
            "t",
            "compress",
            &params(json!({"paths": ["a"], "output": "a.zip"})),
        )
        .unwrap();
    }

    /// The file capability's schemas, without a mesh.
    struct Schemas;
    impl Capability for Schemas {
        fn name(&self) -> &'static str {
            "file"
        }
        fn actions(&self) -> &'static [Action] {
            ACTIONS
        }
        fn execute<'a>(&'a self, _: Call<'a>) -> BoxFuture<'a, Result<Value, Error>> {
            unreachable!()
        }
    }
}

//! The `file` capability on a running mesh, against a real folder: writes and
//! reads (text, base64, large files through the object store and `jetmesh obj
//! get`), every kind of path that would leave the sandbox refused with a
//! stable code and nothing touched outside, and a compress → list → read
//! round trip whose archives are checked by an independent reader (Python's
//! `zipfile` and `tarfile`).

use base64::Engine;
use jetmesh_shared::config::PoolConfig;
use jetmesh_tests::{InProcessMesh, NatsServer, jetmesh_ok, python_ok, request_json, test_config};
use serde_json::{Value, json};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

async fn run(c: &async_nats::Client, action: &str, params: Value) -> Value {
    request_json(c, &format!("mesh.run.file.{action}"), &params, T).await
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_stay_in_the_sandbox_and_archives_round_trip() {
    let server = NatsServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "secret").unwrap();
    let mut config = test_config(&server.url());
    config
        .pools
        .insert("file".into(), PoolConfig::new("file", 2));
    config.file.root = tmp.path().join("root");
    config.file.max_inline_bytes = 1024;
    let m = InProcessMesh::start(config).await;
    let c = server.client().await;

    // Text and binary, written atomically and read back.
    let v = run(
        &c,
        "write",
        json!({"path": "notes/a.txt", "content": "héllo"}),
    )
    .await;
    assert_eq!(v["status"], "success", "{v}");
    assert_eq!(v["output"]["size"], 6);
    let v = run(&c, "read", json!({"path": "notes/a.txt"})).await;
    assert_eq!(v["output"]["content"], "héllo", "{v}");
    assert_eq!(v["output"]["encoding"], "utf8");
    let png = [0x89u8, b'P', b'N', b'G', 0, 0xff, 0xfe];
    let b64 = base64::engine::general_purpose::STANDARD.encode(png);
    let v = run(
        &c,
        "write",
        json!({"path": "bin/x.png", "content": b64, "encoding": "base64"}),
    )
    .await;
    assert_eq!(v["status"], "success", "{v}");
    assert_eq!(
        std::fs::read(tmp.path().join("root/bin/x.png")).unwrap(),
        png
    );
    let v = run(&c, "read", json!({"path": "bin/x.png"})).await;
    assert_eq!(
        (
            v["output"]["encoding"].as_str(),
            v["output"]["content"].as_str()
        ),
        (Some("base64"), Some(b64.as_str())),
        "{v}"
    );
    let v = run(&c, "read", json!({"path": "bin/x.png", "encoding": "utf8"})).await;
    assert_eq!(code(&v), "not_text", "{v}");

    // Every way out is refused, with a stable code, and nothing outside changes.
    std::os::unix::fs::symlink(&outside, tmp.path().join("root/link")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), tmp.path().join("root/pw")).unwrap();
    let long = "n".repeat(300);
    let cases = [
        (
            "read",
            json!({"path": "../outside/secret.txt"}),
            "outside_sandbox",
        ),
        (
            "read",
            json!({"path": "notes/../../outside/secret.txt"}),
            "outside_sandbox",
        ),
        ("read", json!({"path": "/etc/passwd"}), "outside_sandbox"),
        (
            "read",
            json!({"path": "link/secret.txt"}),
            "outside_sandbox",
        ),
        ("read", json!({"path": "pw"}), "outside_sandbox"),
        (
            "write",
            json!({"path": "link/new.txt", "content": "x"}),
            "outside_sandbox",
        ),
        (
            "write",
            json!({"path": "../new.txt", "content": "x"}),
            "outside_sandbox",
        ),
        (
            "delete",
            json!({"path": "link/secret.txt"}),
            "outside_sandbox",
        ),
        ("list", json!({"path": "link"}), "outside_sandbox"),
        (
            "compress",
            json!({"paths": ["link/secret.txt"], "output": "s.zip"}),
            "outside_sandbox",
        ),
        (
            "compress",
            json!({"paths": ["../**/*.txt"], "output": "s.zip"}),
            "outside_sandbox",
        ),
        (
            "compress",
            json!({"paths": ["notes/a.txt"], "output": "/tmp/s.zip"}),
            "outside_sandbox",
        ),
        ("read", json!({"path": "a\u{0}b"}), "invalid_path"),
        (
            "write",
            json!({"path": long.clone(), "content": "x"}),
            "invalid_path",
        ),
        ("read", json!({"path": "nope.txt"}), "not_found"),
        ("list", json!({"path": "notes/a.txt"}), "not_a_directory"),
        ("read", json!({"path": "notes"}), "not_a_file"),
        (
            "read",
            json!({"path": "a", "selector": "x"}),
            "invalid_args",
        ),
    ];
    for (action, params, want) in cases {
        let v = run(&c, action, params.clone()).await;
        assert_eq!(code(&v), want, "{action} {params}: {v}");
    }
    assert_eq!(
        std::fs::read_to_string(outside.join("secret.txt")).unwrap(),
        "secret"
    );
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        1,
        "nothing was written outside"
    );
    assert!(!tmp.path().join("new.txt").exists());

    // compress → list → read, checked by Python's zipfile and tarfile.
    for (p, body) in [
        ("docs/a.md", "# A\n"),
        ("docs/sub/b.md", "# B\n"),
        ("docs/c.txt", "c\n"),
    ] {
        let v = run(&c, "write", json!({"path": p, "content": body})).await;
        assert_eq!(v["status"], "success", "{v}");
    }
    for (output, reader) in [
        (
            "out/docs.zip",
            "import zipfile,sys,json; z=zipfile.ZipFile(sys.argv[1]); assert z.testzip() is None; print(json.dumps({n: z.read(n).decode() for n in sorted(z.namelist())}))",
        ),
        (
            "out/docs.tar.gz",
            "import tarfile,sys,json; t=tarfile.open(sys.argv[1],'r:gz'); print(json.dumps({m.name: t.extractfile(m).read().decode() for m in sorted(t.getmembers(), key=lambda m: m.name)}))",
        ),
    ] {
        let v = run(
            &c,
            "compress",
            json!({"paths": ["docs/**/*.md", "docs/c.txt"], "output": output}),
        )
        .await;
        assert_eq!(v["output"]["entries"], 3, "{v}");
        let size = v["output"]["size"].as_u64().unwrap();
        let v = run(&c, "list", json!({"path": "out", "glob": "docs.*"})).await;
        let listed = v["output"]["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["path"] == output)
            .cloned();
        assert_eq!(
            listed.as_ref().map(|e| e["size"].as_u64()),
            Some(Some(size)),
            "{v}"
        );
        // Read through the object store (forced), fetched back with the CLI.
        let v = run(&c, "read", json!({"path": output, "object": true})).await;
        let reference = &v["output"]["object"];
        assert_eq!(reference["size"].as_u64(), Some(size), "{v}");
        assert_eq!(reference["bucket"], "mesh_objects");
        let fetched = tmp.path().join("fetched");
        let key = reference["key"].as_str().unwrap();
        jetmesh_ok(
            &server.url(),
            &[
                "obj".as_ref(),
                "get".as_ref(),
                key.as_ref(),
                "-o".as_ref(),
                fetched.as_os_str(),
            ],
        );
        let bytes = std::fs::read(&fetched).unwrap();
        assert_eq!(
            jetmesh_shared::objects::sha256_hex(&bytes),
            reference["sha256"].as_str().unwrap()
        );
        let out = python_ok(reader, &[fetched.as_os_str()]);
        let seen: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            seen,
            json!({"docs/a.md": "# A\n", "docs/c.txt": "c\n", "docs/sub/b.md": "# B\n"}),
            "{output}"
        );
        // And back: extract into a new folder.
        let dest = format!("{output}.d");
        let v = run(&c, "extract", json!({"path": output, "output": dest})).await;
        assert_eq!(v["output"]["entries"], 3, "{v}");
        let v = run(&c, "read", json!({"path": format!("{dest}/docs/sub/b.md")})).await;
        assert_eq!(v["output"]["content"], "# B\n", "{v}");
    }

    // A file over max_inline_bytes comes back as a reference, never inline.
    let big = "x".repeat(5000);
    run(&c, "write", json!({"path": "big.txt", "content": big})).await;
    let v = run(&c, "read", json!({"path": "big.txt"})).await;
    assert!(v["output"].get("content").is_none(), "{v}");
    let key = v["output"]["object"]["key"].as_str().unwrap();
    let (r, bytes) = jetmesh_shared::objects::get(&m.mesh, key).await.unwrap();
    assert_eq!((r.size, bytes.len()), (5000, 5000));
    // Written back from the object store under another name.
    let v = run(&c, "write", json!({"path": "copy.txt", "object": key})).await;
    assert_eq!(v["output"]["size"], 5000, "{v}");

    // delete: a file, then a folder (recursive only when asked).
    let v = run(&c, "delete", json!({"path": "docs"})).await;
    assert_eq!(code(&v), "already_exists", "{v}");
    let v = run(&c, "delete", json!({"path": "docs", "recursive": true})).await;
    assert_eq!(v["output"]["deleted"], "directory", "{v}");
    assert!(!tmp.path().join("root/docs").exists());
    m.stop().await;
}

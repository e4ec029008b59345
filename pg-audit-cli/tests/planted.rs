//! Every command of the `pg-audit` program, run as the log's owner (and the read-only role)
//! on a database where the application role planted an operator for every operator name and
//! type pair, and a function for every built-in the program's sources call, in `public` — on
//! the owner's `search_path`, as on PostgreSQL 13 and 14. None of them may ever run: every
//! session the program opens starts with its names resolving in `pg_catalog` alone.
//!
//! The commands are read from the program's own help, recursively, so a new command fails this
//! test until it is swept too.

#[path = "support/http.rs"]
mod http;
#[path = "support/planted.rs"]
mod planted;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pg_audit_tempdb::{Cluster, Server};

fn run(args: &[&str], url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pg-audit"))
        .args(args)
        .env("DATABASE_URL", url)
        .env_remove("RUST_LOG")
        .output()
        .expect("pg-audit runs")
}

fn ok(args: &[&str], url: &str) -> String {
    let out = run(args, url);
    assert!(
        out.status.success(),
        "pg-audit {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Every command path of the program, from its help: `["history"]`, `["sql", "table"]`, ...
/// (a command with subcommands is listed too, and so are its subcommands).
fn commands(prefix: &[String]) -> Vec<Vec<String>> {
    let mut args: Vec<&str> = prefix.iter().map(String::as_str).collect();
    args.push("--help");
    let help = ok(&args, "");
    let mut out = Vec::new();
    for line in help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
    {
        let name = line.split_whitespace().next().expect("a command name");
        if name == "help" {
            continue;
        }
        let mut path = prefix.to_vec();
        path.push(name.to_owned());
        out.push(path.clone());
        out.extend(commands(&path));
    }
    out
}

struct Sweep<'a> {
    server: &'a Server,
    superuser: String,
    /// Every command path of the program.
    all: BTreeSet<String>,
    swept: BTreeSet<String>,
}

impl Sweep<'_> {
    /// Fails, naming what ran, if a planted object has run since the last step; marks the
    /// command `args` ran as swept.
    fn step(&mut self, args: &[&str], what: &str) {
        let calls = planted::calls(self.server, &self.superuser);
        assert_eq!(
            calls,
            0,
            "planted objects ran during {what}: {}",
            planted::fired(self.server, &self.superuser)
        );
        // The longest prefix of the arguments that names a command.
        if let Some(path) = (1..=args.len())
            .rev()
            .map(|n| args[..n].join(" "))
            .find(|p| self.all.contains(p))
        {
            self.swept.insert(path);
        }
    }

    fn psql(&self, url: &str, sql: &str) -> String {
        self.server
            .psql(url, sql)
            .unwrap_or_else(|e| panic!("{e}\n{sql}"))
    }

    /// One value, read by the superuser with names resolving in `pg_catalog`.
    fn value(&self, sql: &str) -> String {
        self.psql(
            &self.superuser,
            &format!("SET search_path = pg_catalog, pg_temp; {sql}"),
        )
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .to_owned()
    }
}

struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn background(args: &[&str], url: &str) -> Background {
    Background(
        Command::new(env!("CARGO_BIN_EXE_pg-audit"))
            .args(args)
            .env("DATABASE_URL", url)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pg-audit starts"),
    )
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn base64(text: &str) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn planted_objects_never_run_in_any_command() {
    let cluster = Cluster::start_private(
        "planted",
        &[
            ("wal_level", "logical"),
            ("max_replication_slots", "4"),
            ("max_wal_senders", "4"),
            ("track_functions", "pl"),
        ],
    )
    .expect("a server with logical replication");
    let server = cluster.server();
    server
        .batch_execute(&cluster.url("postgres"), "CREATE DATABASE app")
        .unwrap();
    let url = |role: &str| format!("postgres://{role}@127.0.0.1:{}/app", cluster.port());
    let (owner, app, reader) = (url("owner"), url("app"), url("reader"));
    let mut sweep = Sweep {
        server: &server,
        superuser: cluster.url("app"),
        all: commands(&[]).into_iter().map(|p| p.join(" ")).collect(),
        swept: BTreeSet::new(),
    };
    sweep.psql(
        &sweep.superuser,
        "CREATE ROLE owner LOGIN REPLICATION;
         CREATE ROLE app LOGIN;
         CREATE ROLE reader LOGIN;
         GRANT CREATE ON DATABASE app TO owner;
         GRANT CREATE ON SCHEMA public TO PUBLIC;",
    );
    sweep.psql(
        &owner,
        "CREATE SCHEMA app;
         CREATE TABLE app.items (id serial PRIMARY KEY, name text NOT NULL, price numeric, tags jsonb);
         CREATE TABLE app.codes (code varchar PRIMARY KEY, label text NOT NULL);
         CREATE TABLE app.events (id bigint PRIMARY KEY, body text);
         GRANT USAGE ON SCHEMA app TO app;
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA app TO app;
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA app TO app;",
    );
    sweep.psql(&owner, &ok(&["sql", "table"], ""));
    for args in [
        &[
            "sql",
            "trigger",
            "--table",
            "app.items",
            "--condition",
            "NEW.price > 0 OR NEW.name <> ''",
        ][..],
        &[
            "sql",
            "trigger",
            "--table",
            "app.codes",
            "--track-only",
            "label",
        ],
        &[
            "sql",
            "trigger",
            "--table",
            "app.events",
            "--capture",
            "wal",
        ],
    ] {
        sweep.psql(&owner, &ok(args, &owner));
    }
    sweep.psql(&owner, &ok(&["sql", "grant", "--role", "reader"], ""));
    // Another tool's history to import: supa_audit's own table (its script, without the calls
    // only an extension may make) holding a row of app.codes.
    let supa: String = std::fs::read_to_string(format!(
        "{}/tests/fixtures/supa_audit/supa_audit--0.3.1.sql",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .lines()
    .filter(|l| !l.contains("pg_extension_config_dump"))
    .collect::<Vec<_>>()
    .join("\n");
    sweep.psql(
        &owner,
        &format!(
            "CREATE EXTENSION IF NOT EXISTS \"uuid-ossp\";
             {supa}
             INSERT INTO audit.record_version (record_id, op, table_oid, table_schema, table_name, record)
             VALUES (gen_random_uuid(), 'INSERT', 'app.codes'::regclass, 'app', 'codes', '{{\"code\": \"Z9\", \"label\": \"imported\"}}');"
        ),
    );
    // A month that has ended, for the archive.
    sweep.psql(
        &owner,
        "DO $$
         DECLARE lo timestamptz := date_trunc('month', now() - interval '3 months');
         BEGIN
             EXECUTE format('CREATE TABLE audit.auditlog_old PARTITION OF audit.auditlog FOR VALUES FROM (%L) TO (%L)',
                            lo, lo + interval '1 month');
         END $$;",
    );

    // The application plants its objects.
    let names = planted::called_names(std::path::Path::new(env!("CARGO_MANIFEST_DIR")));
    sweep.psql(&app, &planted::traps_sql(&names));
    let planted_count =
        sweep.value("SELECT count(*) FROM pg_proc WHERE pronamespace = 'public'::regnamespace");
    assert!(
        planted_count.parse::<u32>().unwrap() > 10_000,
        "{planted_count}"
    );
    // They are real: called by name on a path with `public`, they run.
    sweep.psql(
        &sweep.superuser,
        "SELECT 1::oid = 'pg_class'::regclass; SELECT array_agg(1::bigint);",
    );
    assert_eq!(
        planted::calls(&server, &sweep.superuser),
        2,
        "the traps work"
    );
    sweep.psql(
        &sweep.superuser,
        "SELECT pg_catalog.setval('public.trap_calls', 1, false)",
    );

    // Capture from the write-ahead log runs while the application writes.
    let capture = background(&["capture"], &owner);
    wait_for("the capture slot", || {
        sweep.value("SELECT count(*) FROM pg_replication_slots") == "1"
    });
    sweep.step(&["capture"], "the capture worker's start");
    // The application writes with its own path (public on it): only operators of exact types
    // of its own, so whatever runs is pg-audit's.
    sweep.psql(
        &app,
        r#"BEGIN;
           SET LOCAL pg_audit.context = '{"user_id": "u1", "request_id": "r1", "change_reason": "first"}';
           INSERT INTO app.items (name, price, tags) VALUES ('a', 20, '{"k": 1}'), ('b', 5, NULL), ('c', 7, '[]');
           UPDATE app.items SET name = 'a2' WHERE id = 1;
           INSERT INTO app.codes VALUES ('A1', 'first'), ('B2', 'second');
           UPDATE app.codes SET label = 'changed';
           SELECT pg_catalog.pg_logical_emit_message(true, 'pg_audit', '{"context": {"user_id": "u1"}, "db_user": "app", "tx_started_at": "2026-01-01T00:00:00Z"}');
           INSERT INTO app.events VALUES (1, 'x'), (2, 'y');
           COMMIT;
           DELETE FROM app.items WHERE id = 3;
           DELETE FROM app.codes WHERE label = 'changed';
           UPDATE app.events SET body = 'z' WHERE id = 1;"#,
    );
    sweep.step(&[], "the application's writes");
    wait_for("the captured entries", || {
        sweep.value("SELECT count(*) FROM audit.auditlog WHERE table_name = 'events'") == "3"
    });
    // Stopped by SIGTERM as an operator would, writing what it holds.
    let mut capture = capture;
    let _ = Command::new("kill")
        .args(["-TERM", &capture.0.id().to_string()])
        .status();
    let _ = capture.0.wait();
    sweep.step(&["capture"], "the capture worker");
    // The first transaction happened, for this test, three months ago (the owner's own SQL,
    // with names resolving in pg_catalog).
    sweep.psql(
        &owner,
        "SET search_path = pg_catalog;
         UPDATE audit.auditlog SET changed_at = date_trunc('month', now() - interval '3 months') + id * interval '1 second'
          WHERE txid = (SELECT min(txid) FROM audit.auditlog)",
    );
    let txid = sweep.value("SELECT max(txid) FROM audit.auditlog");
    let dir = std::env::temp_dir().join(format!("pg-audit-planted-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let seals = dir.join("seals.jsonl");
    let archive = dir.join("archive");
    let (seals, archive) = (seals.to_str().unwrap(), archive.to_str().unwrap());

    let runs: Vec<(Vec<&str>, &str)> = vec![
        (vec!["sql", "table"], ""),
        (
            vec!["sql", "trigger", "--table", "app.items"],
            owner.as_str(),
        ),
        (
            vec!["sql", "trigger", "--table", "app.items", "--uninstall"],
            "",
        ),
        (vec!["sql", "grant", "--role", "reader"], ""),
        (vec!["capture", "status"], owner.as_str()),
        (vec!["history", "app.items", "1"], owner.as_str()),
        (vec!["history", "app.items", "1", "--json"], reader.as_str()),
        (vec!["history", "app.codes", "A1"], owner.as_str()),
        (vec!["history", "app.events", "1"], reader.as_str()),
        (vec!["tx", &txid], owner.as_str()),
        (vec!["partitions", "list"], owner.as_str()),
        (vec!["partitions", "ensure"], owner.as_str()),
        (
            vec!["baseline", "--table", "app.items", "--batch-size", "1"],
            owner.as_str(),
        ),
        (vec!["partitions", "count"], owner.as_str()),
        (
            vec!["partitions", "prune", "--older-than", "10 years"],
            owner.as_str(),
        ),
        (vec!["check"], owner.as_str()),
        (vec!["check"], reader.as_str()),
        (vec!["seal"], owner.as_str()),
        (vec!["seal", "--export", seals], owner.as_str()),
        (vec!["verify"], owner.as_str()),
        (vec!["verify", "--seals", seals], reader.as_str()),
        (
            vec!["archive", "--older-than", "1 month", "--to", archive],
            owner.as_str(),
        ),
        (vec!["archive", "list"], owner.as_str()),
        (
            vec!["history", "app.items", "1", "--archived"],
            owner.as_str(),
        ),
        (
            vec![
                "redact",
                "--table",
                "app.items",
                "--key",
                "2",
                "--columns",
                "name",
                "--reason",
                "Sweep",
            ],
            owner.as_str(),
        ),
        (
            vec!["redact", "--user", "u1", "--reason", "Sweep"],
            owner.as_str(),
        ),
        (vec!["verify"], owner.as_str()),
        (vec!["import", "--from", "supa-audit"], owner.as_str()),
        (vec!["completions", "bash"], ""),
        (vec!["man"], ""),
    ];
    for (args, url) in &runs {
        let out = ok(args, url);
        if args[0] == "sql" && !args.contains(&"--uninstall") {
            sweep.psql(&owner, &out);
        }
        sweep.step(args, &format!("pg-audit {}", args.join(" ")));
    }
    // An export once every entry is sealed (other tests' transactions hold the seals' horizon
    // back a while), checked against the seals kept apart.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        ok(&["seal"], &owner);
        let unsealed = sweep.value(
            "SELECT count(*) FROM audit.auditlog WHERE id > (SELECT coalesce(max(last_id), 0) FROM audit.auditlog_seals)",
        );
        if unsealed == "0" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "rows stayed unsealed");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    ok(&["seal", "--export", seals], &owner);
    let export = dir.join("export.jsonl");
    let export = export.to_str().unwrap();
    for (args, url) in [
        (
            vec![
                "export",
                "--from",
                "2000-01-01",
                "--until",
                "2100-01-01",
                "-o",
                export,
            ],
            owner.as_str(),
        ),
        (vec!["verify-export", export, "--seals", seals], ""),
    ] {
        ok(&args, url);
        sweep.step(&args, &format!("pg-audit {}", args.join(" ")));
    }

    // The admin, with credentials (every page and form, revert and restore included), and
    // read-only on loopback as the reader.
    let samples = [
        ("table", "app.items"),
        ("user", "u1"),
        ("request", "r1"),
        ("tx", txid.as_str()),
        ("key", r#"{"id": 1}"#),
        ("from", "2020-01-01T00:00"),
        ("until", "2100-01-01T00:00"),
        ("at", "2100-01-01T00:00"),
    ];
    for (url, credentials) in [(&owner, true), (&reader, false)] {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let metrics_port = free_port();
        let metrics_listen = format!("127.0.0.1:{metrics_port}");
        let mut args = vec![
            "admin",
            "--listen",
            &listen,
            "--metrics-listen",
            &metrics_listen,
        ];
        if credentials {
            args.extend(["--basic-auth", "sweeper:sweep-password"]);
        }
        let _admin = background(&args, url);
        wait_for("the admin", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let auth = format!("Basic {}", base64("sweeper:sweep-password"));
        let headers: Vec<(&str, &str)> = if credentials {
            vec![("Authorization", &auth)]
        } else {
            Vec::new()
        };
        let addr: SocketAddr = listen.parse().unwrap();
        let server = &server;
        let superuser = sweep.superuser.clone();
        let crawl = planted::crawl(addr, "/", &headers, &samples, credentials, &mut |what| {
            let calls = planted::calls(server, &superuser);
            assert_eq!(
                calls,
                0,
                "planted objects ran during {what} of pg-audit admin: {}",
                planted::fired(server, &superuser)
            );
        });
        assert!(crawl.requests.len() > 20, "{:?}", crawl.paths());
        // Every page of the admin (the program serves the library's router).
        for route in pg_audit_admin::ROUTES
            .into_iter()
            .filter(|r| credentials || !r.starts_with("/record/"))
        {
            assert!(
                crawl.reached("", route),
                "the crawl never reached {route}: {:?}",
                crawl.paths()
            );
        }
        if credentials {
            assert!(
                crawl
                    .requests
                    .iter()
                    .any(|(r, s)| r.starts_with("POST") && *s == 303),
                "no change was made: {:?}",
                crawl
                    .requests
                    .iter()
                    .filter(|(r, _)| r.starts_with("POST"))
                    .collect::<Vec<_>>()
            );
        }
        // Its metrics server reads the seals through a session of its own.
        for path in ["/metrics", "/health"] {
            let (status, body) = http::get(metrics_port, &metrics_listen, path, None);
            assert_eq!(status, "HTTP/1.1 200 OK", "{path}: {body}");
        }
        assert_eq!(
            planted::calls(server, &superuser),
            0,
            "planted objects ran during the admin's metrics: {}",
            planted::fired(server, &superuser)
        );
        sweep.step(&["admin"], "pg-audit admin");
    }

    let out = run(&["capture", "drop-slot"], &owner);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sweep.step(&["capture", "drop-slot"], "pg-audit capture drop-slot");
    let _ = std::fs::remove_dir_all(&dir);

    // Every command of the program was swept (`sql` and `partitions` only group theirs).
    assert!(sweep.all.len() > 15, "{:?}", sweep.all);
    let unswept: Vec<&String> = sweep
        .all
        .iter()
        .filter(|c| !sweep.swept.contains(*c) && !matches!(c.as_str(), "sql" | "partitions"))
        .collect();
    assert!(
        unswept.is_empty(),
        "commands not swept (add them to this test): {unswept:?}"
    );
}

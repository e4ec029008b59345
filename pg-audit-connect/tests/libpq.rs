//! The connection strings `pg-audit-connect` reads reach what `psql` (libpq) reaches with the
//! same string and environment — the same role, database and port — and the strings libpq
//! refuses are refused: URLs, `key=value` pairs, the `PG*` variables, the default socket
//! through `PGHOST`, several hosts, quoting, percent-encoding and the password file.

use std::collections::BTreeMap;
use std::process::Command;

use pg_audit_connect::{ConnInfo, connect_to};
use pg_audit_tempdb::Cluster;

const WHO: &str = "SELECT current_user || ' ' || current_database() || ' ' || coalesce(inet_server_port()::text, 'socket')";

/// What psql prints for [`WHO`] with `conninfo` and `env`, or its error.
fn with_psql(
    cluster: &Cluster,
    conninfo: &str,
    env: &BTreeMap<String, String>,
) -> Result<String, String> {
    let out = Command::new(cluster.bindir().join("psql"))
        .args(["-X", "-A", "-t", "-c", WHO, conninfo])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", "/nonexistent")
        .envs(env)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap().trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The same through `pg-audit-connect`.
async fn with_ours(conninfo: &str, env: &BTreeMap<String, String>) -> Result<String, String> {
    let mut env = env.clone();
    env.entry("HOME".to_owned())
        .or_insert_with(|| "/nonexistent".to_owned());
    let info = ConnInfo::parse_with(conninfo, &|name| env.get(name).cloned(), None)
        .map_err(|e| e.to_string())?;
    let client = connect_to(&info)
        .await
        .map_err(|e| pg_audit::error_chain(&e))?;
    let row = client
        .query_one(WHO, &[])
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_string_reaches_what_psql_reaches() {
    let cluster = Cluster::start_private("libpq", &[]).unwrap();
    let port = cluster.port();
    let socket = cluster.dir().display().to_string();
    let admin = cluster.socket_conninfo("postgres");
    let client = pg_audit_connect::connect(&admin).await.unwrap();
    for sql in [
        "CREATE DATABASE db1",
        "CREATE DATABASE \"my db\"",
        "CREATE ROLE pw LOGIN PASSWORD 's@cret:1'",
    ] {
        client.batch_execute(sql).await.unwrap();
    }
    // `pw` signs in with its password; everyone else is trusted.
    let hba = cluster.dir().join("data/pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all pw 127.0.0.1/32 scram-sha-256\nlocal all pw scram-sha-256\n{rules}"),
    )
    .unwrap();
    client
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let passfile = cluster.dir().join("pgpass");
    std::fs::write(
        &passfile,
        format!("# pg-audit test\n127.0.0.1:{port}:db1:pw:s@cret\\:1\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();

    let env = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let passfile = passfile.display().to_string();
    let port_s = port.to_string();
    let encoded_socket = socket.replace('/', "%2F");
    let cases: Vec<(String, BTreeMap<String, String>)> = vec![
        (
            format!("postgres://postgres@127.0.0.1:{port}/db1"),
            env(&[]),
        ),
        (
            format!("host=127.0.0.1 port={port} user=postgres dbname=db1"),
            env(&[]),
        ),
        (
            format!("  host = 127.0.0.1   port={port} user='postgres' dbname = 'my db' "),
            env(&[]),
        ),
        (
            format!("postgresql://127.0.0.1:{port}/my%20db?user=postgres&application_name=x"),
            env(&[]),
        ),
        (
            "postgres:///db1".to_owned(),
            env(&[
                ("PGHOST", &socket),
                ("PGPORT", &port_s),
                ("PGUSER", "postgres"),
            ]),
        ),
        (
            String::new(),
            env(&[
                ("PGHOST", "127.0.0.1"),
                ("PGPORT", &port_s),
                ("PGUSER", "postgres"),
                ("PGDATABASE", "db1"),
            ]),
        ),
        (
            format!("postgres://{encoded_socket}:{port}/db1?user=postgres"),
            env(&[]),
        ),
        (format!("host={socket} port={port} user=postgres"), env(&[])),
        (
            format!("host=127.0.0.1,127.0.0.1 port={closed},{port} user=postgres dbname=db1"),
            env(&[]),
        ),
        (
            format!("postgres://postgres@127.0.0.1:{closed},127.0.0.1:{port}/db1"),
            env(&[]),
        ),
        // The password file, and a password in the URL (percent-encoded).
        (
            format!("host=127.0.0.1 port={port} user=pw dbname=db1"),
            env(&[("PGPASSFILE", &passfile)]),
        ),
        (
            format!("postgres://pw:s%40cret%3A1@127.0.0.1:{port}/db1"),
            env(&[]),
        ),
        (
            format!("host=127.0.0.1 port={port} user=pw dbname=db1"),
            env(&[("PGPASSWORD", "s@cret:1")]),
        ),
        (
            format!("host=localhost hostaddr=127.0.0.1 port={port} user=postgres dbname=db1"),
            env(&[]),
        ),
        (
            format!("postgres://postgres:se?cret@127.0.0.1:{port}/db1"),
            env(&[]),
        ),
        (
            format!(
                "host=127.0.0.1 port={port} user=postgres dbname=db1 target_session_attrs=read-write"
            ),
            env(&[]),
        ),
        (
            format!("postgres://postgres@127.0.0.1:{port}/db1?"),
            env(&[]),
        ),
        // Refused by both.
        (
            format!(
                "host=127.0.0.1 port={port} user=pw dbname=db1 channel_binding=require sslmode=disable"
            ),
            env(&[("PGPASSWORD", "s@cret:1")]),
        ),
        (
            format!("host={socket} port={port} user=postgres dbname=db1 requirepeer=nobody"),
            env(&[]),
        ),
        (
            format!("host=127.0.0.1 port={port} user=postgres dbname=db1 gssencmode=require"),
            env(&[]),
        ),
        (
            format!("host=127.0.0.1 port={port} user=postgres dbname=db1 sslmode="),
            env(&[]),
        ),
        (
            format!(
                "host=127.0.0.1 port={port}{}user=nobody dbname=db1",
                "\u{a0}"
            ),
            env(&[]),
        ),
        (
            format!("postgres://postgres@127.0.0.1:{port}/db1?&&"),
            env(&[]),
        ),
        (
            format!("host=127.0.0.1 port={port} user=pw dbname=db1"),
            env(&[("PGPASSWORD", "wrong")]),
        ),
        (format!("host=127.0.0.1 port={port} hots=x"), env(&[])),
        (
            format!("host=127.0.0.1 port={port} sslmode=maybe"),
            env(&[]),
        ),
        ("port=abc".to_owned(), env(&[])),
        (
            format!("host=127.0.0.1 port={port} dbname='unterminated"),
            env(&[]),
        ),
        (
            format!("postgres://127.0.0.1:{port}/db1?user=postgres&nosuch=1"),
            env(&[]),
        ),
    ];
    let mut refused = 0;
    for (conninfo, env) in &cases {
        let psql = with_psql(&cluster, conninfo, env);
        let ours = with_ours(conninfo, env).await;
        match (&psql, &ours) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{conninfo:?} {env:?}"),
            (Err(_), Err(_)) => refused += 1,
            _ => panic!("{conninfo:?} {env:?}: psql {psql:?}, ours {ours:?}"),
        }
    }
    assert_eq!(refused, 12, "the cases meant to be refused, and only those");
}

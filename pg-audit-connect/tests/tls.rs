//! TLS as libpq's `sslmode` means it, against a real server that accepts TLS connections only
//! (`ssl = on`, `hostssl` rules, a `hostnossl` reject), with certificates this test makes: each
//! mode connects or is refused as psql would be, and the session really is encrypted.

use pg_audit_connect::{ConnInfo, Error, connect};
use pg_audit_tempdb::Cluster;

/// Whether the session is encrypted, as the server sees it.
async fn encrypted(conninfo: &str) -> Result<bool, Error> {
    let client = connect(conninfo).await?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_catalog.pg_stat_ssl WHERE pid = pg_catalog.pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    Ok(row.get(0))
}

fn chain(e: &Error) -> String {
    pg_audit::error_chain(e)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_sslmode_means_what_it_means_to_libpq() {
    let cluster = Cluster::start_private("tls", &[]).unwrap();
    let tls = cluster.require_tls().unwrap();
    let port = cluster.port();
    let admin = cluster.socket_conninfo("postgres");
    let ca = tls.root().display().to_string();
    let other = tls.other_root().display().to_string();
    let at = |host: &str, rest: &str| format!("postgres://postgres@{host}:{port}/postgres?{rest}");

    // Only TLS is let in: without it the server's rule refuses the session.
    let refused = encrypted(&at("127.0.0.1", "sslmode=disable"))
        .await
        .unwrap_err();
    assert!(
        chain(&refused).contains("no encryption"),
        "{}",
        chain(&refused)
    );
    // The socket, which TLS never runs over, whatever the mode.
    assert!(
        !encrypted(&format!("{admin} sslmode=require"))
            .await
            .unwrap()
    );
    assert!(encrypted(&at("127.0.0.1", "sslmode=prefer")).await.unwrap());
    assert!(
        encrypted(&at("127.0.0.1", "")).await.unwrap(),
        "prefer is the default"
    );
    assert!(
        encrypted(&at("127.0.0.1", "sslmode=require"))
            .await
            .unwrap()
    );
    assert!(
        encrypted(&at(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca}")
        ))
        .await
        .unwrap()
    );
    assert!(
        encrypted(&at(
            "127.0.0.1",
            &format!("sslmode=verify-full&sslrootcert={ca}")
        ))
        .await
        .unwrap()
    );
    assert!(
        encrypted(&at(
            "127.0.0.1",
            &format!("sslmode=verify-ca&sslrootcert={ca}")
        ))
        .await
        .unwrap()
    );
    // A key=value string and the PGSSL* variables read the same way.
    let info = ConnInfo::parse_with(
        &format!("host=localhost port={port} user=postgres"),
        &|name| match name {
            "PGSSLMODE" => Some("verify-full".to_owned()),
            "PGSSLROOTCERT" => Some(ca.clone()),
            _ => None,
        },
        None,
    )
    .unwrap();
    pg_audit_connect::connect_to(&info).await.unwrap();

    // The server's own certificate given as the root: that exact certificate is trusted.
    let own = tls.server_certificate().display().to_string();
    assert!(
        encrypted(&at(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={own}")
        ))
        .await
        .unwrap()
    );
    // A root that did not sign the server's certificate: refused when checked, not otherwise.
    for mode in ["verify-ca", "verify-full"] {
        let e = encrypted(&at(
            "localhost",
            &format!("sslmode={mode}&sslrootcert={other}"),
        ))
        .await
        .unwrap_err();
        assert!(
            chain(&e).contains("not signed by a root of sslrootcert"),
            "{mode}: {}",
            chain(&e)
        );
    }
    // Checked as verify-ca when a root is given, as libpq does.
    let e = encrypted(&at(
        "localhost",
        &format!("sslmode=require&sslrootcert={other}"),
    ))
    .await
    .unwrap_err();
    assert!(
        chain(&e).contains("not signed by a root of sslrootcert"),
        "{}",
        chain(&e)
    );
    // A check without a root to check against does not start.
    let e = encrypted(&at("localhost", "sslmode=verify-full"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Tls(_)), "{e:?}");
    assert!(chain(&e).contains("sslrootcert"), "{}", chain(&e));

    // A certificate for another name: verify-full refuses it, verify-ca takes it.
    tls.serve_misnamed(&cluster).unwrap();
    let e = encrypted(&at(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await
    .unwrap_err();
    assert!(
        chain(&e).contains("not valid for name \"localhost\""),
        "{}",
        chain(&e)
    );
    assert!(
        encrypted(&at(
            "localhost",
            &format!("sslmode=verify-ca&sslrootcert={ca}")
        ))
        .await
        .unwrap()
    );
}

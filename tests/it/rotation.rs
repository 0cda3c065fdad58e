//! Key rotation: rows written under an old key (in either ciphertext format) still decrypt
//! once a new key is listed first; `tokenwarden rotate-key` (the real binary) rewrites every
//! row so the old key can then be dropped; a wrong key is a clear error, never a panic, and
//! never shows a key or a token.

use std::time::Duration;

use aes_gcm::{
    Aes256Gcm, Key,
    aead::{Aead, AeadCore, KeyInit, OsRng, Payload},
};
use base64::{
    Engine,
    engine::general_purpose::{STANDARD, STANDARD_NO_PAD},
};
use reqwest::Method;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, sea_query::Expr};
use tokenwarden::{
    crypto::key_id,
    store::entity::{oauth_state, user},
};

use crate::{
    on_both_backends,
    process::tokenwarden,
    support::{
        Backend, ENCRYPTION_KEY, Options, TestApp, eventually, inconsistent_users, location, logs,
    },
};

fn key_bytes(b64: &str) -> [u8; 32] {
    STANDARD.decode(b64).unwrap().try_into().unwrap()
}

/// The new key of the rotation (32 bytes of 0x2b).
fn new_key() -> String {
    STANDARD.encode([0x2b; 32])
}

/// A ciphertext as the first release wrote it: `v1:` and no key id.
fn legacy_ciphertext(key: &str, plaintext: &str, context: &str) -> String {
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key_bytes(key)));
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let sealed = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext.as_bytes(),
                aad: context.as_bytes(),
            },
        )
        .unwrap();
    let mut raw = nonce.to_vec();
    raw.extend(sealed);
    format!("v1:{}", STANDARD_NO_PAD.encode(raw))
}

/// Rewrites a user's token columns in the legacy format, as an old release left them.
async fn make_legacy(t: &TestApp, user_id: &str) {
    use secrecy::ExposeSecret;
    let Some(tokenwarden::store::SyncSnapshot::Connected { tokens, version }) =
        t.app().store.sync_snapshot(user_id).await.unwrap()
    else {
        panic!("{user_id} connected");
    };
    let access = legacy_ciphertext(
        ENCRYPTION_KEY,
        tokens.access_token.expose_secret(),
        &format!("google_access_token:{user_id}"),
    );
    let refresh = legacy_ciphertext(
        ENCRYPTION_KEY,
        tokens.refresh_token.expose_secret(),
        &format!("google_refresh_token:{user_id}"),
    );
    let done = user::Entity::update_many()
        .col_expr(user::Column::GoogleAccessToken, Expr::value(access))
        .col_expr(user::Column::GoogleRefreshToken, Expr::value(refresh))
        .filter(user::Column::UserId.eq(user_id))
        .filter(user::Column::TokenVersion.eq(version))
        .exec(t.app().store.connection())
        .await
        .unwrap();
    assert_eq!(done.rows_affected, 1, "{user_id} changed meanwhile");
}

/// Every token column and PKCE verifier, as stored.
async fn all_ciphertexts(t: &TestApp) -> Vec<String> {
    let db = t.app().store.connection();
    let mut out = Vec::new();
    for row in user::Entity::find().all(db).await.unwrap() {
        out.extend(row.google_access_token);
        out.extend(row.google_refresh_token);
    }
    for row in oauth_state::Entity::find().all(db).await.unwrap() {
        out.push(row.pkce_verifier);
    }
    out
}

async fn all_synced(t: &TestApp, users: &[String]) {
    let consistent = eventually(Duration::from_secs(10), || async {
        inconsistent_users(t, users).await.is_empty()
    })
    .await;
    assert!(
        consistent,
        "microservice matches the database for {:?}",
        inconsistent_users(t, users).await
    );
}

async fn old_key_rows_still_decrypt_after_adding_a_new_key(backend: Backend) {
    let mut t = TestApp::on(backend).await;
    let users: Vec<String> = ["ka1", "ka2", "ka3"].map(String::from).to_vec();
    for user in &users {
        t.connect(user).await;
    }
    all_synced(&t, &users).await;
    make_legacy(&t, "ka3").await;
    let old_id = key_id(&key_bytes(ENCRYPTION_KEY));
    assert!(
        all_ciphertexts(&t)
            .await
            .iter()
            .all(|c| c.starts_with(&format!("v2:{old_id}:")) || c.starts_with("v1:"))
    );

    t.options.encryption_key = format!("{},{ENCRYPTION_KEY}", new_key());
    t.restart().await;
    // Every row, in either format, is read with the old key, and a refresh writes with the new.
    for user in &users {
        assert!(
            t.stored_access_token(user).await.is_some(),
            "{user} readable"
        );
    }
    for user in &users {
        let (status, _) = t
            .admin(Method::POST, &format!("/admin/actors/{user}/refresh"))
            .await;
        assert_eq!(status, 202);
    }
    let new_id = key_id(&key_bytes(&new_key()));
    let rewritten = eventually(Duration::from_secs(10), || async {
        let mut all = true;
        for user in &users {
            let row = t.app().store.user(user).await.unwrap().unwrap();
            all &= row
                .google_access_token
                .is_some_and(|c| c.starts_with(&format!("v2:{new_id}:")));
        }
        all
    })
    .await;
    assert!(
        rewritten,
        "refreshed access tokens are sealed with the new key"
    );
    all_synced(&t, &users).await;
    assert!(
        !logs().contains("cannot be read"),
        "no decryption failure:\n{}",
        logs()
    );
    t.shutdown().await;
}
on_both_backends!(old_key_rows_still_decrypt_after_adding_a_new_key);

async fn rotate_key_rewrites_every_row_so_the_old_key_can_go(backend: Backend) {
    // Refreshes every second or so, so the rotation runs beside real writes.
    let mut t = TestApp::spawn_with(Options {
        backend,
        token_lifetime: Duration::from_secs(3),
        refresh_lead_secs: 2,
        ..Options::default()
    })
    .await;
    let mut users: Vec<String> = (0..12).map(|i| format!("rot-{i:02}")).collect();
    for user in &users {
        t.connect(user).await;
    }
    all_synced(&t, &users).await;
    // Stop the refresh churn for the legacy rewrite, so it does not race a refresh.
    t.google.set_token_lifetime(Duration::from_secs(3600));
    for user in &users {
        let (status, _) = t
            .admin(Method::POST, &format!("/admin/actors/{user}/refresh"))
            .await;
        assert_eq!(status, 202);
    }
    let calm = eventually(Duration::from_secs(10), || async {
        let mut calm = true;
        for user in &users[..2] {
            calm &= t
                .app()
                .store
                .user(user)
                .await
                .unwrap()
                .unwrap()
                .google_token_expiry
                > Some(chrono::Utc::now() + chrono::Duration::minutes(30));
        }
        calm
    })
    .await;
    assert!(calm);
    make_legacy(&t, "rot-00").await;
    make_legacy(&t, "rot-01").await;
    // A consent under way across the whole rotation.
    let pending_consent = t.start_connect("rot-pending").await;
    // Back to short lifetimes: refreshes go on while rotate-key runs.
    t.google.set_token_lifetime(Duration::from_secs(3));
    for user in &users {
        let _ = t
            .admin(Method::POST, &format!("/admin/actors/{user}/refresh"))
            .await;
    }

    let keys = format!("{},{ENCRYPTION_KEY}", new_key());
    t.options.encryption_key = keys.clone();
    t.restart().await;
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let output = tokenwarden(dir.path())
        .arg("rotate-key")
        .env("DATABASE_URL", &t.db.url)
        .env("TOKEN_ENCRYPTION_KEY", &keys)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "rotate-key: {stdout}{stderr}");
    eprintln!("rotate-key took {:?}: {stdout}", started.elapsed());
    assert!(stdout.contains("1 pending consents"), "{stdout}");
    assert!(stdout.contains("re-encrypted "), "{stdout}");

    let new_id = key_id(&key_bytes(&new_key()));
    let sealed = all_ciphertexts(&t).await;
    assert_eq!(sealed.len(), 12 * 2 + 1);
    for c in &sealed {
        assert!(
            c.starts_with(&format!("v2:{new_id}:")),
            "not rotated: {}",
            &c[..12]
        );
    }

    // The old key goes: the service still reads every token, refreshes and pushes.
    t.options.encryption_key = new_key();
    t.restart().await;
    let callback = t.follow_consent(&pending_consent).await;
    assert_eq!(
        location(&callback),
        "http://frontend.test/dashboard/integrations?google=connected"
    );
    users.push("rot-pending".into());
    t.google.set_token_lifetime(Duration::from_secs(3600));
    for user in &users {
        let _ = t
            .admin(Method::POST, &format!("/admin/actors/{user}/refresh"))
            .await;
    }
    all_synced(&t, &users).await;
    for user in &users {
        let Some(tokenwarden::store::SyncSnapshot::Connected { tokens, .. }) =
            t.app().store.sync_snapshot(user).await.unwrap()
        else {
            panic!("{user} connected");
        };
        use secrecy::ExposeSecret;
        assert!(
            t.google
                .is_refresh_token_valid(tokens.refresh_token.expose_secret()),
            "{user}'s refresh token works at Google"
        );
        assert_eq!(t.status(user).await["needs_reconnect"], false);
    }
    assert!(
        !logs().contains("cannot be read"),
        "no decryption failure:\n{}",
        logs()
    );
    t.shutdown().await;
}
on_both_backends!(rotate_key_rewrites_every_row_so_the_old_key_can_go);

async fn a_wrong_key_is_a_clear_error(backend: Backend) {
    let mut t = TestApp::on(backend).await;
    t.connect("wk1").await;
    let issued = t.google.issued_tokens();
    assert!(!issued.is_empty());
    let app = t.app.take().unwrap();
    let addr = app.addr;
    app.shutdown().await;
    let wrong = STANDARD.encode([0x77; 32]);
    let secrets: Vec<String> = issued
        .iter()
        .cloned()
        .chain([wrong.clone(), ENCRYPTION_KEY.to_string(), new_key()])
        .collect();
    let leaks = |text: &str| secrets.iter().any(|s| text.contains(s.as_str()));

    let dir = tempfile::tempdir().unwrap();
    for key in [wrong.clone(), format!("{},{wrong}", new_key())] {
        let output = tokenwarden(dir.path())
            .arg("rotate-key")
            .env("DATABASE_URL", &t.db.url)
            .env("TOKEN_ENCRYPTION_KEY", &key)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("TOKEN_ENCRYPTION_KEY"), "{stderr}");
        assert!(stderr.contains("does not decrypt with any key"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!leaks(&stderr), "a key or token leaked: {stderr}");
        eprintln!("rotate-key with a wrong key: {}", stderr.trim());
    }
    // A malformed list names the bad key's position, not its value.
    let output = tokenwarden(dir.path())
        .arg("rotate-key")
        .env("DATABASE_URL", &t.db.url)
        .env("TOKEN_ENCRYPTION_KEY", format!("{ENCRYPTION_KEY},c2hvcnQ="))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("key 2 of 2"), "{stderr}");
    assert!(!leaks(&stderr) && !stderr.contains("c2hvcnQ="), "{stderr}");

    // The service refuses to start rather than failing every refresh later.
    t.options.encryption_key = wrong.clone();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let err = match tokenwarden::app::App::spawn(t.config(addr), listener).await {
        Ok(_) => panic!("started with a wrong key"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("TOKEN_ENCRYPTION_KEY"), "{err}");
    assert!(!leaks(&err), "{err}");
    eprintln!("serve with a wrong key: {err}");

    // Nothing was damaged: with the right key everything is still there.
    t.options.encryption_key = ENCRYPTION_KEY.into();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    t.app = Some(
        tokenwarden::app::App::spawn(t.config(addr), listener)
            .await
            .unwrap(),
    );
    assert!(t.stored_access_token("wk1").await.is_some());
    t.shutdown().await;
}
on_both_backends!(a_wrong_key_is_a_clear_error);

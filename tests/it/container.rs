//! The container image (issue 23): the top-level `Containerfile` built with podman and run
//! against the sandbox Google provider, the reference microservice and PostgreSQL, on the
//! host's network. No registry is reachable here, so the base image is a stand-in made from
//! the host's own files (the libraries `ldd` names, the CA certificates, a passwd entry for
//! the non-root user 65532) with `podman import`, passed as `--build-arg BASE=`; the binary
//! packaged is the one the test suite built (debug, stripped of its debug info, named with
//! `--build-arg BINARY=`), so CI compiles nothing twice.
//!
//! podman on these machines needs runc, cgroupfs and no default ulimits: [`Podman`] sets
//! that up in a `CONTAINERS_CONF` of its own. Without podman the test is skipped with a loud
//! message, except under `CI=true` (`.ci/run` installs it), where that fails.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use crate::{
    process::{BIN, client, connect_at, free_port, sandboxes, serve_env},
    support::{Backend, ENCRYPTION_KEY, TestDatabase, eventually, postgres_available},
};

/// The repository's top level (the `Containerfile`).
const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// The service's grace after SIGTERM is 10 s; podman kills after this.
const STOP_TIMEOUT_SECS: u64 = 15;

/// podman with this machine's settings: runc, cgroupfs, no default ulimits, events to a file
/// (no journald, no systemd here).
struct Podman {
    conf: tempfile::TempDir,
}

impl Podman {
    /// `None` (after saying so) when podman is missing outside CI.
    fn find() -> Option<Self> {
        let found = Command::new("podman")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            let message = "the container image test needs podman (Debian: apt-get install \
                           podman runc)";
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
            eprintln!("SKIPPED (loudly): {message}");
            return None;
        }
        let conf = tempfile::tempdir().unwrap();
        std::fs::write(
            conf.path().join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n\n[engine]\ncgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\nruntime = \"runc\"\n",
        )
        .unwrap();
        Some(Self { conf })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("podman");
        command
            .env("CONTAINERS_CONF", self.conf.path().join("containers.conf"))
            .args(args);
        command
    }

    /// Runs podman; panics with its output unless it succeeds.
    fn run(&self, args: &[&str]) -> Output {
        let output = self.command(args).output().unwrap();
        assert!(
            output.status.success(),
            "podman {args:?}: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }
}

/// The stand-in base: what distroless's `cc` image gives (glibc and the other libraries the
/// binary links, CA certificates, user and group `nonroot` 65532 with its home), imported as
/// `image`.
fn import_base(podman: &Podman, binary: &Path, work: &Path, image: &str) {
    let stage = work.join("base");
    for dir in ["etc/ssl/certs", "home/nonroot", "tmp"] {
        std::fs::create_dir_all(stage.join(dir)).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(stage.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let ldd = Command::new("ldd").arg(binary).output().unwrap();
    assert!(ldd.status.success(), "ldd {binary:?}");
    let libraries: Vec<PathBuf> = String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect();
    assert!(!libraries.is_empty(), "ldd named no libraries");
    for library in libraries {
        let to = stage.join(library.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        // Copies the file a symlink names (glibc's libraries are symlinks on some systems).
        std::fs::copy(&library, &to).unwrap();
    }
    std::fs::copy(
        "/etc/ssl/certs/ca-certificates.crt",
        stage.join("etc/ssl/certs/ca-certificates.crt"),
    )
    .expect("the host's CA certificates (Debian: ca-certificates)");
    std::fs::write(
        stage.join("etc/passwd"),
        "root:x:0:0:root:/root:/sbin/nologin\n\
         nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
    )
    .unwrap();
    std::fs::write(stage.join("etc/group"), "root:x:0:\nnonroot:x:65532:\n").unwrap();
    let tar = work.join("base.tar");
    // Owners set in the archive: root's everything but the non-root user's home.
    let tops: Vec<String> = std::fs::read_dir(&stage)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != "home")
        .collect();
    let ok = Command::new("tar")
        .arg("-C")
        .arg(&stage)
        .args(["--owner=0", "--group=0", "-cf"])
        .arg(&tar)
        .args(&tops)
        .status()
        .unwrap()
        .success()
        && Command::new("tar")
            .arg("-C")
            .arg(&stage)
            .args(["--owner=65532", "--group=65532", "-rf"])
            .arg(&tar)
            .arg("home")
            .status()
            .unwrap()
            .success();
    assert!(ok, "tar of the stand-in base");
    podman.run(&[
        "import",
        "--change",
        "USER 65532",
        tar.to_str().unwrap(),
        image,
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_serves_a_user_and_stops_cleanly_on_sigterm() {
    let Some(podman) = Podman::find() else {
        return;
    };
    if !postgres_available().await {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the container image test needs PostgreSQL"
        );
        eprintln!("SKIPPED: the container image test needs PostgreSQL");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let tag = format!("{:08x}", rand::random::<u32>());
    let base = format!("localhost/tokenwarden-test-base:{tag}");
    let image = format!("localhost/tokenwarden-test:{tag}");
    let name = format!("tokenwarden-test-{tag}");

    let built = Instant::now();
    import_base(&podman, Path::new(BIN), work.path(), &base);
    let context = work.path().join("context");
    std::fs::create_dir_all(context.join("bin")).unwrap();
    // The debug binary without its debug info: 300 MB less to copy into a layer.
    let stripped = Command::new("strip")
        .arg("-o")
        .arg(context.join("bin/tokenwarden"))
        .arg(BIN)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(BIN, context.join("bin/tokenwarden")).unwrap();
    }
    let containerfile = format!("{REPO}/Containerfile");
    podman.run(&[
        "build",
        "--runtime",
        "runc",
        // Docker's format keeps the HEALTHCHECK (OCI images have none).
        "--format",
        "docker",
        "-f",
        &containerfile,
        "--build-arg",
        &format!("BASE={base}"),
        "--build-arg",
        "BINARY=bin/tokenwarden",
        "-t",
        &image,
        context.to_str().unwrap(),
    ]);
    eprintln!("image built in {:?}", built.elapsed());

    let (google, microservice) = sandboxes(Duration::from_secs(8)).await;
    let db = TestDatabase::create(Backend::Postgres).await;
    let port = free_port().await;
    let mut env = serve_env(port, &db.url, ENCRYPTION_KEY, &google, &microservice);
    env.push(("REFRESH_LEAD_SECS", "4".into()));
    let env_file = work.path().join("env");
    let lines: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    std::fs::write(&env_file, lines.join("\n") + "\n").unwrap();
    podman.run(&[
        "run",
        "-d",
        "--runtime",
        "runc",
        "--network",
        "host",
        "--name",
        &name,
        "--env-file",
        env_file.to_str().unwrap(),
        &image,
    ]);
    let container = Container {
        podman: &podman,
        name: name.clone(),
        images: vec![image.clone(), base.clone()],
    };
    let url = format!("http://127.0.0.1:{port}");
    let http = client();
    let ready = eventually(Duration::from_secs(60), || async {
        matches!(http.get(format!("{url}/readyz")).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    assert!(ready, "the container is not ready:\n{}", container.logs());

    // Runs as the image's non-root user, with no shell in the image.
    let user = podman.run(&["inspect", "-f", "{{.Config.User}}", &image]);
    assert_eq!(String::from_utf8_lossy(&user.stdout).trim(), "65532:65532");
    let health = podman
        .command(&["healthcheck", "run", &name])
        .output()
        .unwrap();
    assert!(
        health.status.success(),
        "the image's health check: {}{}",
        String::from_utf8_lossy(&health.stdout),
        String::from_utf8_lossy(&health.stderr)
    );

    // A user connects through the consent path and the refresh 4 s before expiry is pushed.
    connect_at(&http, &url, "container-user").await;
    let refreshed = eventually(Duration::from_secs(20), || async {
        microservice
            .token_version("container-user")
            .await
            .unwrap()
            .is_some_and(|v| v >= 2)
    })
    .await;
    assert!(
        refreshed,
        "the refresh was pushed: {:?}\n{}",
        google.stats(),
        container.logs()
    );

    // SIGTERM (the image's STOPSIGNAL): a clean exit within the service's 10 s grace.
    let stopping = Instant::now();
    podman.run(&["stop", "--time", &STOP_TIMEOUT_SECS.to_string(), &name]);
    let took = stopping.elapsed();
    let code = podman.run(&["inspect", "-f", "{{.State.ExitCode}}", &name]);
    let logs = container.logs();
    assert_eq!(
        String::from_utf8_lossy(&code.stdout).trim(),
        "0",
        "exit code after SIGTERM:\n{logs}"
    );
    assert!(took < Duration::from_secs(10), "stopped in {took:?}");
    assert!(
        logs.contains("stopped;"),
        "the service's last line:\n{logs}"
    );
}

/// The test's container and images, removed at the end, passed or failed.
struct Container<'a> {
    podman: &'a Podman,
    name: String,
    images: Vec<String>,
}

impl Container<'_> {
    fn logs(&self) -> String {
        let output = self.podman.command(&["logs", &self.name]).output().unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self
            .podman
            .command(&["rm", "-f", "-t", "0", &self.name])
            .output();
        for image in &self.images {
            let _ = self.podman.command(&["rmi", "-f", image]).output();
        }
    }
}

/// The image's health check without a service to ask: exit code 1 (Docker reserves 2) and one
/// line saying where it looked.
#[tokio::test]
async fn the_health_check_fails_with_exit_code_1_when_nothing_answers() {
    let port = free_port().await;
    let dir = tempfile::tempdir().unwrap();
    let output = crate::process::tokenwarden(dir.path())
        .args(["healthcheck", "--listen-addr", &format!("0.0.0.0:{port}")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot connect to 127.0.0.1:{port}")),
        "{stderr}"
    );
}

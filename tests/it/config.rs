//! The real `nodens` binary: configuration errors stop it with the key and
//! the value named, `--help` documents the flags, and a started binary
//! serves and exits 0 on SIGTERM.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::support::server::{eventually, http_get};
use crate::support::upstream::{build_query, udp_exchange, FakeUpstream};

const BIN: &str = env!("CARGO_BIN_EXE_nodens");
/// A bad config must stop nodens at once; this only bounds a hang.
const EXIT: Duration = Duration::from_secs(10);

/// What a finished (or killed) run left behind.
#[derive(Debug)]
struct Run {
    /// None: still running at the deadline, so it was killed.
    status: Option<ExitStatus>,
    /// The deadline it was given.
    timeout: Duration,
    stdout: String,
    stderr: String,
}

/// A child process killed on drop, so a failing test leaves nothing running.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A `nodens` command with no NODENS_* variables inherited from the test's environment.
fn nodens(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("NODENS_CONFIG")
        .env_remove("NODENS_LISTEN")
        .env_remove("NODENS_UPSTREAM")
        .env_remove("NODENS_ADMIN")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Waits for the child until `deadline` passes (polling `try_wait`); kills it then.
fn wait_until(proc: &mut Proc, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Some(status) = proc.0.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = proc.0.kill();
            let _ = proc.0.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` to completion (at most `timeout`), collecting its output.
async fn run(mut cmd: Command, timeout: Duration) -> Run {
    tokio::task::spawn_blocking(move || {
        let mut proc = Proc(cmd.spawn().expect("spawn nodens"));
        // Drain both pipes on their own threads so a chatty child never blocks.
        let mut out = proc.0.stdout.take().unwrap();
        let mut err = proc.0.stderr.take().unwrap();
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let status = wait_until(&mut proc, Instant::now() + timeout);
        Run {
            status,
            timeout,
            stdout: out.join().unwrap(),
            stderr: err.join().unwrap(),
        }
    })
    .await
    .unwrap()
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("nodens.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// The run failed on its own (not killed) and stderr names every needle.
fn assert_rejected(run: &Run, what: &str, needles: &[&str]) {
    let status = run
        .status
        .unwrap_or_else(|| panic!("{what}: still running after {:?}: {run:?}", run.timeout));
    assert!(!status.success(), "{what}: exited 0: {run:?}");
    for n in needles {
        assert!(
            run.stderr.contains(n),
            "{what}: stderr does not name {n:?}:\n{}",
            run.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_files_stop_nodens_naming_key_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &[&str])] = &[
        ("unknown key", "listne = []\n", &["listne"]),
        ("unknown key in a table", "[cache]\nmax_tll = 5\n", &["max_tll"]),
        ("value out of range", "edns_udp_size = 100\n", &["edns_udp_size", "100"]),
        ("bad duration", "[upstream]\ntimeout = \"soon\"\n", &["timeout", "soon"]),
        (
            "bad upstream address",
            "[upstream]\nservers = [\"not-an-ip\"]\n",
            &["servers", "not-an-ip"],
        ),
        (
            "inconsistent TTLs",
            "[cache]\nmin_ttl = 10\nmax_ttl = 5\n",
            &["cache.min_ttl", "10"],
        ),
    ];
    for (what, text, needles) in cases {
        let file = write_config(dir.path(), text);
        let r = run(nodens(&["serve", "--config", &file]), EXIT).await;
        assert_rejected(&r, what, needles);
    }

    // A missing file is named too.
    let missing = dir.path().join("absent.toml");
    let missing = missing.to_str().unwrap();
    let r = run(nodens(&["serve", "--config", missing]), EXIT).await;
    assert_rejected(&r, "missing file", &["absent.toml"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_from_the_environment_is_checked_too() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), "listne = []\n");
    let mut cmd = nodens(&["serve"]);
    cmd.env("NODENS_CONFIG", &file);
    let r = run(cmd, EXIT).await;
    assert_rejected(&r, "NODENS_CONFIG with `serve`", &["listne"]);
}

/// `serve` is documented as the default command, so its flags work without
/// naming it. With a bad config the fixed binary stops at once; the test
/// fails (rather than serving on the default ports) if the flags are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_is_the_default_command() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), "listne = []\n");
    let r = run(nodens(&["--config", &file]), EXIT).await;
    assert_rejected(&r, "`nodens --config FILE` without `serve`", &["listne"]);
}

/// The environment is honoured by the default command as well
/// (config/nodens.toml documents NODENS_* for every run of nodens).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_command_reads_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), "listne = []\n");
    let mut cmd = nodens(&[]);
    cmd.env("NODENS_CONFIG", &file);
    // Should exit at once; if the variable is ignored nodens starts serving
    // on its defaults and is killed at this (shorter) deadline.
    let r = run(cmd, Duration::from_secs(3)).await;
    assert_rejected(&r, "NODENS_CONFIG without `serve`", &["listne"]);
}

fn assert_help_mentions_flags(args: &[&str], r: &Run) {
    let status = r.status.unwrap_or_else(|| panic!("{args:?}: hung: {r:?}"));
    assert!(status.success(), "{args:?}: {r:?}");
    for flag in ["--listen", "--upstream", "--admin", "--config"] {
        assert!(
            r.stdout.contains(flag),
            "`nodens {}` does not mention {flag}:\n{}",
            args.join(" "),
            r.stdout
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_help_documents_the_flags() {
    let args = ["serve", "--help"];
    assert_help_mentions_flags(&args, &run(nodens(&args), EXIT).await);
}

/// `serve` being the default command, its flags belong in the top-level help.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_level_help_documents_the_flags() {
    let args = ["--help"];
    assert_help_mentions_flags(&args, &run(nodens(&args), EXIT).await);
}

/// A free port for both UDP and TCP on 127.0.0.1 (released again: another
/// process could take it before nodens binds, which only fails this test).
fn free_dns_port() -> u16 {
    for _ in 0..32 {
        let udp = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP");
}

fn free_tcp_port() -> u16 {
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_and_exits_zero_on_sigterm() {
    let upstream = FakeUpstream::start_example().await;
    let dns = SocketAddr::from((Ipv4Addr::LOCALHOST, free_dns_port()));
    let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_tcp_port()));
    let mut cmd = nodens(&[
        "serve",
        "--listen",
        &dns.to_string(),
        "--admin",
        &admin.to_string(),
        "--upstream",
        &upstream.addr().to_string(),
    ]);
    cmd.stdout(Stdio::null()).stderr(Stdio::inherit());
    let mut proc = Proc(cmd.spawn().expect("spawn nodens"));
    let pid = proc.0.id();

    let answered = eventually(Duration::from_secs(15), || async move {
        let q = build_query("www.example.com.", RecordType::A, None);
        udp_exchange(dns, &q, Duration::from_millis(200))
            .await
            .is_some_and(|r| r.metadata.response_code == ResponseCode::NoError && r.answers.len() == 1)
    })
    .await;
    if !answered {
        let status = proc.0.try_wait().unwrap();
        panic!("nodens never answered on {dns} (exit status so far: {status:?})");
    }
    assert!(upstream.queries() >= 1, "answered without asking the upstream");
    let (status, body) = http_get(admin, "/readyz").await;
    assert_eq!((status, body.trim()), (200, "ready"));

    let kill = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(kill.success());
    let status = tokio::task::spawn_blocking(move || {
        let status = wait_until(&mut proc, Instant::now() + Duration::from_secs(10));
        drop(proc);
        status
    })
    .await
    .unwrap();
    let status = status.expect("nodens still running 10 s after SIGTERM");
    assert_eq!(status.code(), Some(0), "exit after SIGTERM: {status:?}");

    // Gone: nothing answers on its port any more.
    let q = build_query("www.example.com.", RecordType::A, None);
    assert!(udp_exchange(dns, &q, Duration::from_millis(300)).await.is_none());
}

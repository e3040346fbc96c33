//! Encrypted transport for the TLS tests: a throwaway certificate authority
//! (rcgen), a throwaway PostgreSQL cluster with `ssl = on` that refuses
//! plain-text connections (initdb + pg_ctl in a temporary directory, on a
//! free port), and stunnel in front of the real RabbitMQ. Each server stops
//! when its guard is dropped, also when the test fails.
//!
//! Nothing is skipped: a missing initdb or stunnel fails the test, naming
//! what to install (`scripts/ensure-services.sh` installs both).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use super::http::free_port;

/// How long a server may take to accept connections.
const UP_WITHIN: Duration = Duration::from_secs(60);

/// A certificate authority made for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM: what a client trusts.
    pub pem: String,
}

/// A server certificate and its key, PEM.
pub struct ServerCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The validity of a server certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From a day ago for a year.
    Current,
    /// Ended in 2001.
    Expired,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let pem = params.self_signed(&key).expect("CA certificate").pem();
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn issue(&self, names: &[&str], validity: Validity) -> ServerCert {
        let key = KeyPair::generate().expect("server key");
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "zhima-worker test server");
        let now = std::time::SystemTime::now();
        match validity {
            Validity::Current => {
                params.not_before = (now - Duration::from_secs(86_400)).into();
                params.not_after = (now + Duration::from_secs(365 * 86_400)).into();
            }
            Validity::Expired => {
                params.not_before = rcgen::date_time_ymd(2000, 1, 1);
                params.not_after = rcgen::date_time_ymd(2001, 1, 1);
            }
        }
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("server certificate");
        ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes the CA certificate to `dir/name`; returns its path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, &self.pem).expect("write CA file");
        path
    }
}

fn wait_for_port(port: u16, child: &mut Child, what: &str, log: &Path) {
    let deadline = Instant::now() + UP_WITHIN;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited {status} before listening on {port}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port} within {UP_WITHIN:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// stunnel in front of the real RabbitMQ (127.0.0.1:5672): TLS on `port`
/// with the given certificate. Killed on drop.
pub struct Stunnel {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Stunnel {
    pub fn start(cert: &ServerCert) -> Self {
        let binary = ["stunnel4", "stunnel"]
            .into_iter()
            .find(|name| on_path(name))
            .unwrap_or_else(|| {
                panic!(
                    "stunnel is not installed (the amqps:// tests need it): run \
                     scripts/ensure-services.sh, or `apt-get install stunnel4`"
                )
            });
        let dir = tempfile::tempdir().expect("tempdir");
        let cert_path = dir.path().join("server.crt");
        let key_path = dir.path().join("server.key");
        std::fs::write(&cert_path, &cert.cert_pem).expect("write cert");
        write_private(&key_path, &cert.key_pem);
        let port = free_port();
        let log = dir.path().join("stunnel.log");
        let config = dir.path().join("stunnel.conf");
        std::fs::write(
            &config,
            format!(
                "foreground = yes\npid =\noutput = {log}\n\n[amqps]\naccept = 127.0.0.1:{port}\n\
                 connect = 127.0.0.1:5672\ncert = {cert}\nkey = {key}\n",
                log = log.display(),
                cert = cert_path.display(),
                key = key_path.display(),
            ),
        )
        .expect("write stunnel.conf");
        let child = Command::new(binary)
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start stunnel");
        // The guard first: a stunnel that never listens is killed too.
        let mut stunnel = Self {
            port,
            child,
            _dir: dir,
        };
        wait_for_port(port, &mut stunnel.child, "stunnel", &log);
        stunnel
    }

    /// An `amqps://` URL of the real broker through this stunnel.
    pub fn url(&self, host: &str) -> String {
        format!("amqps://guest:guest@{host}:{}/%2f", self.port)
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A PostgreSQL cluster of its own: `ssl = on` with the given certificate,
/// plain-text TCP connections rejected (`hostnossl ... reject`), superuser
/// `postgres` trusted over TLS. Stopped (immediate) and deleted on drop.
pub struct TlsPostgres {
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    /// Who runs the server: root may not (initdb refuses), so `postgres` then.
    run_as: Option<String>,
    _dir: tempfile::TempDir,
}

impl TlsPostgres {
    pub fn start(cert: &ServerCert) -> Self {
        let bin = postgres_bin_dir();
        let run_as = is_root().then(|| "postgres".to_owned());
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        if let Some(user) = &run_as {
            chown(dir.path(), user);
        }
        let cluster = Self {
            port: free_port(),
            bin,
            data,
            run_as,
            _dir: dir,
        };
        let initdb = cluster.run(
            "initdb",
            &[
                "-D",
                cluster.data_str(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        assert!(initdb.status.success(), "initdb failed:\n{}", text(&initdb));
        let cert_path = cluster.data.join("server.crt");
        let key_path = cluster.data.join("server.key");
        std::fs::write(&cert_path, &cert.cert_pem).expect("write cert");
        write_private(&key_path, &cert.key_pem);
        std::fs::write(
            cluster.data.join("pg_hba.conf"),
            "local all all trust\n\
             hostnossl all all 0.0.0.0/0 reject\n\
             hostnossl all all ::/0 reject\n\
             hostssl all all 127.0.0.1/32 trust\n\
             hostssl all all ::1/128 trust\n",
        )
        .expect("write pg_hba.conf");
        let socket_dir = cluster.data.parent().expect("parent").display().to_string();
        let mut conf =
            std::fs::read_to_string(cluster.data.join("postgresql.conf")).expect("postgresql.conf");
        conf.push_str(&format!(
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{socket_dir}'\n\
             ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
             fsync = off\nmax_connections = 40\n",
            cluster.port
        ));
        std::fs::write(cluster.data.join("postgresql.conf"), conf).expect("write conf");
        if let Some(user) = &cluster.run_as {
            for path in [&cert_path, &key_path] {
                chown(path, user);
            }
            for name in ["pg_hba.conf", "postgresql.conf"] {
                chown(&cluster.data.join(name), user);
            }
        }
        let log = cluster.data.parent().expect("parent").join("postgres.log");
        let log_text = log.display().to_string();
        let started = cluster.run(
            "pg_ctl",
            &[
                "-D",
                cluster.data_str(),
                "-l",
                &log_text,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        assert!(
            started.status.success(),
            "pg_ctl start failed:\n{}\n{}",
            text(&started),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        cluster
    }

    /// The URL of database `postgres` on this cluster at `host`, with `query`
    /// (e.g. `sslmode=verify-full`).
    pub fn url(&self, host: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{query}", self.port)
    }

    fn data_str(&self) -> &str {
        self.data.to_str().expect("UTF-8 temp path")
    }

    fn run(&self, program: &str, args: &[&str]) -> std::process::Output {
        let program = self.bin.join(program);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(&program);
                command
            }
            None => Command::new(&program),
        };
        command
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let data = self.data.display().to_string();
        let _ = self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }
}

/// The bin directory of the newest PostgreSQL under /usr/lib/postgresql
/// (Debian's layout), else the one `pg_config --bindir` names.
fn postgres_bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return bin;
    }
    let bindir = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
        .filter(|bin| bin.join("initdb").is_file());
    bindir.unwrap_or_else(|| {
        panic!(
            "initdb not found (in /usr/lib/postgresql/*/bin or pg_config --bindir): the TLS \
             tests start their own PostgreSQL cluster; install PostgreSQL \
             (scripts/ensure-services.sh does)"
        )
    })
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn is_root() -> bool {
    let output = Command::new("id").arg("-u").output().expect("id -u");
    String::from_utf8_lossy(&output.stdout).trim() == "0"
}

fn chown(path: &Path, user: &str) {
    let id = |flag: &str| -> u32 {
        let output = Command::new("id").args([flag, user]).output().expect("id");
        assert!(
            output.status.success(),
            "user {user} does not exist: as root the TLS tests run PostgreSQL as {user} \
             (the postgresql package creates it)"
        );
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("numeric id")
    };
    std::os::unix::fs::chown(path, Some(id("-u")), Some(id("-g"))).expect("chown");
}

/// A private key file, mode 0600 (PostgreSQL refuses a key others can read).
fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .expect("create key file");
    file.write_all(text.as_bytes()).expect("write key");
}

fn text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

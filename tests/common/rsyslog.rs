//! A real rsyslogd in the foreground with a generated config: imtcp (octet-counted framing on)
//! and imudp on free loopback ports, each writing what it parsed to its own file with a template
//! that shows every RFC 5424 field: `PRI|TIMESTAMP|HOSTNAME|APP-NAME|PROCID|MSGID|SD|MSG`.

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::temp_dir;

pub struct Rsyslog {
    child: Child,
    pub tcp_port: u16,
    pub udp_port: u16,
    pub tcp_out: PathBuf,
    pub udp_out: PathBuf,
    dir: PathBuf,
}

/// rsyslogd is in /usr/sbin, which is not always on PATH.
fn rsyslogd() -> PathBuf {
    for p in ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    "rsyslogd".into()
}

pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Rsyslog {
    pub fn start() -> Rsyslog {
        Rsyslog::start_on(free_tcp_port())
    }

    /// Starts on a given TCP port (for outage tests that start the receiver late).
    pub fn start_on(tcp_port: u16) -> Rsyslog {
        let dir = temp_dir("rsyslog");
        let udp_port = free_udp_port();
        let tcp_out = dir.join("tcp.log");
        let udp_out = dir.join("udp.log");
        let conf = dir.join("rsyslog.conf");
        std::fs::write(
            &conf,
            format!(
                r#"global(workDirectory="{dir}" maxMessageSize="256k")
module(load="imtcp")
module(load="imudp")
template(name="fields" type="string" string="%pri%|%timereported:::date-rfc3339%|%hostname%|%app-name%|%procid%|%msgid%|%structured-data%|%msg%\n")
ruleset(name="tcp") {{ action(type="omfile" file="{tcp}" template="fields") }}
ruleset(name="udp") {{ action(type="omfile" file="{udp}" template="fields") }}
input(type="imtcp" address="127.0.0.1" port="{tcp_port}" ruleset="tcp" supportOctetCountedFraming="on")
input(type="imudp" address="127.0.0.1" port="{udp_port}" ruleset="udp")
"#,
                dir = dir.display(),
                tcp = tcp_out.display(),
                udp = udp_out.display(),
            ),
        )
        .unwrap();
        let child = Command::new(rsyslogd())
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rsyslogd (./test.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", tcp_port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "rsyslogd did not start listening"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Rsyslog {
            child,
            tcp_port,
            udp_port,
            tcp_out,
            udp_out,
            dir,
        }
    }

    /// An rsyslog that writes, for each message received on TCP (octet counting on), one JSON
    /// object of the fields it parsed: `pri`, `version` (0 for RFC 3164, 1 for RFC 5424),
    /// `host`, `app`, `procid`, `reported` and `generated` (RFC 3339; equal when the message had
    /// no timestamp) and `msg`, into `tcp_out`.
    pub fn parser() -> Rsyslog {
        let dir = temp_dir("rsyslog-parse");
        let tcp_port = free_tcp_port();
        let tcp_out = dir.join("parsed.jsonl");
        let conf = dir.join("rsyslog.conf");
        std::fs::write(
            &conf,
            format!(
                r#"global(workDirectory="{dir}" maxMessageSize="64k" parser.escapeControlCharactersOnReceive="off")
module(load="imtcp")
template(name="json" type="string" string="{{\"pri\":%pri%,\"version\":%protocol-version%,\"host\":\"%hostname:::json%\",\"app\":\"%app-name:::json%\",\"procid\":\"%procid:::json%\",\"reported\":\"%timereported:::date-rfc3339%\",\"generated\":\"%timegenerated:::date-rfc3339%\",\"msg\":\"%msg:::json%\"}}\n")
ruleset(name="r") {{ action(type="omfile" file="{out}" template="json") }}
input(type="imtcp" address="127.0.0.1" port="{tcp_port}" ruleset="r" supportOctetCountedFraming="on")
"#,
                dir = dir.display(),
                out = tcp_out.display(),
            ),
        )
        .unwrap();
        Rsyslog::launched(dir, &conf, tcp_port, 0, tcp_out)
    }

    /// An rsyslog that receives on its own TCP port (octet counted) and forwards everything with
    /// `omfwd` to `tcp_target` (octet-counted framing) and `udp_target`, in RFC 5424.
    pub fn forwarder(tcp_target: &str, udp_target: &str) -> Rsyslog {
        let dir = temp_dir("rsyslog-fwd");
        let tcp_port = free_tcp_port();
        let conf = dir.join("rsyslog.conf");
        let (th, tp) = tcp_target.rsplit_once(':').unwrap();
        let (uh, up) = udp_target.rsplit_once(':').unwrap();
        std::fs::write(
            &conf,
            format!(
                r#"global(workDirectory="{dir}")
module(load="imtcp")
ruleset(name="fwd") {{
  action(type="omfwd" target="{th}" port="{tp}" protocol="tcp" TCP_Framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format")
  action(type="omfwd" target="{uh}" port="{up}" protocol="udp" template="RSYSLOG_SyslogProtocol23Format")
}}
input(type="imtcp" address="127.0.0.1" port="{tcp_port}" ruleset="fwd" supportOctetCountedFraming="on")
"#,
                dir = dir.display(),
            ),
        )
        .unwrap();
        Rsyslog::launched(dir, &conf, tcp_port, 0, PathBuf::new())
    }

    /// An rsyslog with two TLS inputs (its OpenSSL driver): `tcp_port` accepts any client
    /// (`anon`), `udp_port` (reused as the second TLS port) requires a client certificate signed
    /// by `ca` (`x509/certvalid`). Both write to `tcp_out`.
    pub fn tls(ca: &Path, cert: &Path, key: &Path) -> Rsyslog {
        let dir = temp_dir("rsyslog-tls");
        let (anon, mutual) = (free_tcp_port(), free_tcp_port());
        let out = dir.join("tls.log");
        let conf = dir.join("rsyslog.conf");
        std::fs::write(
            &conf,
            format!(
                r#"global(workDirectory="{dir}" DefaultNetstreamDriverCAFile="{ca}" DefaultNetstreamDriverCertFile="{cert}" DefaultNetstreamDriverKeyFile="{key}")
module(load="imtcp" StreamDriver.Name="ossl" StreamDriver.Mode="1" StreamDriver.AuthMode="anon")
template(name="fields" type="string" string="%pri%|%timereported:::date-rfc3339%|%hostname%|%app-name%|%procid%|%msgid%|%structured-data%|%msg%
")
ruleset(name="r") {{ action(type="omfile" file="{out}" template="fields") }}
input(type="imtcp" address="127.0.0.1" port="{anon}" ruleset="r")
input(type="imtcp" address="127.0.0.1" port="{mutual}" ruleset="r" streamDriver.authMode="x509/certvalid")
"#,
                dir = dir.display(),
                ca = ca.display(),
                cert = cert.display(),
                key = key.display(),
                out = out.display(),
            ),
        )
        .unwrap();
        Rsyslog::launched(dir, &conf, anon, mutual, out)
    }

    /// rsyslogd started on `conf` (listening on `tcp_port`), writing TCP input to `tcp_out`.
    fn launched(
        dir: PathBuf,
        conf: &Path,
        tcp_port: u16,
        udp_port: u16,
        tcp_out: PathBuf,
    ) -> Rsyslog {
        Rsyslog {
            child: launch(&dir, conf, tcp_port),
            tcp_port,
            udp_port,
            tcp_out,
            udp_out: PathBuf::new(),
            dir,
        }
    }

    /// The lines rsyslog wrote to `file` so far.
    pub fn lines(file: &Path) -> Vec<String> {
        std::fs::read_to_string(file)
            .map(|s| s.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// Waits (bounded) until `file` holds at least `n` lines, and returns them.
    pub async fn wait_lines(file: &Path, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let lines = Rsyslog::lines(file);
            if lines.len() >= n {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "rsyslog wrote {} of {n} lines",
                lines.len()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

fn launch(dir: &Path, conf: &Path, tcp_port: u16) -> Child {
    let child = Command::new(rsyslogd())
        .arg("-n")
        .arg("-f")
        .arg(conf)
        .arg("-i")
        .arg(dir.join("rsyslogd.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rsyslogd (./test.sh installs it)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", tcp_port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "rsyslogd did not start listening"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

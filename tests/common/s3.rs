//! A real S3-compatible server for tests: moto (`moto_server`, from PyPI; ./test.sh installs it
//! and sets SLUICE_MOTO_SERVER), on a loopback port, killed on drop.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use sluice_store::archive::{S3Config, s3_client};

pub struct Moto {
    child: Child,
    pub port: u16,
}

fn moto_server() -> PathBuf {
    if let Ok(p) = std::env::var("SLUICE_MOTO_SERVER") {
        return p.into();
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let default = PathBuf::from(home).join(".cache/sluice-test-tools/moto/bin/moto_server");
    assert!(
        default.exists(),
        "moto_server not found: run ./test.sh, which installs it"
    );
    default
}

impl Moto {
    pub fn start_on(port: u16) -> Moto {
        let child = Command::new(moto_server())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Moto { child, port }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The same client Sluice builds, pointed at `endpoint`, with moto's dummy credentials.
pub async fn client(endpoint: &str) -> Client {
    let config = S3Config {
        bucket: String::new(),
        region: "us-east-1".into(),
        prefix: String::new(),
        endpoint: Some(endpoint.to_owned()),
        part_size_bytes: 5 << 20,
        compression_level: 1,
        unready_after_failing_secs: 600,
    };
    let credentials =
        aws_sdk_s3::config::Credentials::new("sluice-test", "sluice-test", None, None, "tests");
    s3_client(&config, Some(credentials)).await
}

/// Every key in `bucket`.
pub async fn keys(client: &Client, bucket: &str) -> Vec<String> {
    match client.list_objects_v2().bucket(bucket).send().await {
        Ok(out) => out
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// An object's bytes, gunzipped.
pub async fn gunzipped(client: &Client, bucket: &str, key: &str) -> Vec<u8> {
    let out = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    let gz = out.body.collect().await.unwrap().into_bytes();
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut text).unwrap();
    text
}

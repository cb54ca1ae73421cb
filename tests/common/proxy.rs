//! A TCP proxy on a port that stays the same while the server behind it stops, starts again
//! on a new port, or is cut off: for clients that must reconnect.

use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct Proxy {
    pub addr: String,
    target: Arc<Mutex<String>>,
    accept: Option<JoinHandle<()>>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    /// Listens on `127.0.0.1:0` and forwards each connection to `target`.
    pub async fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut proxy = Proxy {
            addr,
            target: Arc::new(Mutex::new(target.to_owned())),
            accept: None,
            links: Arc::default(),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&mut self, listener: TcpListener) {
        let target = self.target.clone();
        let links = self.links.clone();
        self.accept = Some(tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let to = target.lock().unwrap().clone();
                links.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        }));
    }

    /// Cuts every connection and stops listening: clients are refused until [`Proxy::open`].
    pub fn close(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
        }
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    /// Listens again on the same port, forwarding to `target`.
    pub async fn open(&mut self, target: &str) {
        *self.target.lock().unwrap() = target.to_owned();
        // The aborted accept task drops its listener when the runtime gets to it.
        let listener = super::eventually("the proxy's port to be free", 10, async || {
            TcpListener::bind(&self.addr).await.ok()
        })
        .await;
        self.serve(listener);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.close();
    }
}

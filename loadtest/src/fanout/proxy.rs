//! A round-robin TCP proxy in front of the replicas, as a Service's proxy is: each new
//! connection goes to the next backend that accepts it; a removed backend gets no new
//! connections, and the ones it has go on until it closes them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};

/// A running proxy (stopped on drop).
pub(crate) struct Proxy {
    addr: SocketAddr,
    backends: Arc<Mutex<Vec<SocketAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .parse()
        .expect("a loopback server's URL is http://IP:PORT")
}

impl Proxy {
    /// Listens on a loopback port in front of `urls` (`http://IP:PORT`).
    pub(crate) async fn start(urls: Vec<String>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let backends = Arc::new(Mutex::new(
            urls.iter().map(|u| addr_of(u)).collect::<Vec<_>>(),
        ));
        let next = Arc::new(AtomicUsize::new(0));
        let b = backends.clone();
        let task = tokio::spawn(async move {
            loop {
                let mut inbound = match listener.accept().await {
                    Ok((s, _)) => s,
                    Err(e) => {
                        // Out of descriptors, as a busy proxy may be: the connection waits in
                        // the backlog and the proxy goes on.
                        eprintln!("proxy: accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let (b, next) = (b.clone(), next.clone());
                tokio::spawn(async move {
                    let list: Vec<SocketAddr> = b.lock().unwrap().clone();
                    for _ in 0..list.len() {
                        let i = next.fetch_add(1, Ordering::Relaxed) % list.len();
                        if let Ok(mut outbound) = TcpStream::connect(list[i]).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            return;
                        }
                    }
                });
            }
        });
        Ok(Self {
            addr,
            backends,
            task,
        })
    }

    /// The proxy's URL.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A backend joins (a new replica became ready).
    pub(crate) fn add(&self, url: String) {
        self.backends.lock().unwrap().push(addr_of(&url));
    }

    /// A backend leaves (a replica is terminating).
    pub(crate) fn remove(&self, url: &str) {
        let a = addr_of(url);
        self.backends.lock().unwrap().retain(|b| *b != a);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

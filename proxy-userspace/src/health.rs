//! The proxy's health as the VRRP engine sees it (`track_proxy`). The proxy holds a
//! [`ProxyHealth`] and reports with [`ProxyHealth::set`]; every instance with `track_proxy`
//! reacts at once, with no polling delay.
use tokio::sync::watch;

/// The sending side: owned by the proxy.
#[derive(Clone, Debug)]
pub struct ProxyHealth(watch::Sender<bool>);

impl ProxyHealth {
    /// A handle that starts healthy, and the receiver the daemon listens on.
    pub fn new() -> (ProxyHealth, watch::Receiver<bool>) {
        let (tx, rx) = watch::channel(true);
        (ProxyHealth(tx), rx)
    }

    /// Reports the proxy healthy (listeners alive, routes with a healthy upstream) or not.
    pub fn set(&self, healthy: bool) {
        self.0
            .send_if_modified(|h| std::mem::replace(h, healthy) != healthy);
    }
}

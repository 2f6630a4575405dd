//! Webhook deliveries (DESIGN.md 5.6).

use latchkey_store::repo::deliveries::Delivery;
use tokio::sync::watch;

use crate::config::WebhookConfig;
use crate::deliver::{Deliverer, Outcome};

/// Sends webhook deliveries.
pub(crate) struct Webhooks {}

impl Webhooks {
    pub(crate) fn new(_config: &WebhookConfig) -> Self {
        Self {}
    }

    pub(crate) async fn deliver(&self, _d: &Deliverer, _row: Delivery, _stop: &mut watch::Receiver<bool>) -> Outcome {
        Outcome::Failed("webhooks are not supported yet")
    }
}

//! The outbox: gets every CTI request to Zammad, one call's requests one at a time and in
//! order, different calls concurrently.
//!
//! Owns the per-call queues, the retry policy (zammad-cti.md §11.12: a duplicate `newCall`
//! counts as delivered, an unknown callId is permanent, a `hangup` is only retried when it
//! certainly did not reach Zammad) and what happens to a call whose `newCall` Zammad
//! refused (its later events are dropped: Zammad would answer them with 500s). `push`
//! never blocks, so the AMI side never waits on HTTP. The queues live in memory: keeping
//! them across restarts is a later step, which is why this is a piece of its own.

use crate::ami::backoff::Backoff;
use crate::cti::{CallId, CtiEventKind, CtiRequest, ZammadDecision};
use crate::zammad::{ZammadClient, ZammadError};
use dashmap::DashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};

/// Zammad's answer to a call's `newCall`, for whoever acts on it (reject, dial).
pub type DecisionSender = oneshot::Sender<Result<ZammadDecision, ZammadError>>;

struct Item {
    request: CtiRequest,
    decision: Option<DecisionSender>,
}

/// Cloneable handle to the outbox.
#[derive(Clone)]
pub struct Outbox {
    client: Arc<ZammadClient>,
    /// One queue per open call; its worker removes the entry when the call is done.
    queues: Arc<DashMap<CallId, mpsc::UnboundedSender<Item>>>,
    /// Workers, so shutdown can wait for what is in flight.
    tasks: TaskTracker,
    cancel: CancellationToken,
    retry: Backoff,
}

impl Outbox {
    pub fn new(client: ZammadClient, cancel: CancellationToken) -> Self {
        Self {
            client: Arc::new(client),
            queues: Arc::new(DashMap::new()),
            tasks: TaskTracker::new(),
            cancel,
            retry: Backoff::new(Duration::from_millis(250), Duration::from_secs(30), 0.2),
        }
    }

    /// Queues a request behind the earlier ones of the same call. Never blocks.
    pub fn push(&self, request: CtiRequest) {
        self.push_item(Item {
            request,
            decision: None,
        });
    }

    /// Queues a `newCall` and hands Zammad's decision to `decision` once it is known.
    pub fn push_with_decision(&self, request: CtiRequest, decision: DecisionSender) {
        self.push_item(Item {
            request,
            decision: Some(decision),
        });
    }

    fn push_item(&self, item: Item) {
        let id = item.request.call_id.clone();
        let mut item = Some(item);
        if let Some(queue) = self.queues.get(&id) {
            match queue.send(item.take().expect("not sent yet")) {
                Ok(()) => return,
                // The worker just finished; start a new one below.
                Err(mpsc::error::SendError(back)) => item = Some(back),
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(item.take().expect("not sent yet"))
            .expect("receiver alive");
        self.queues.insert(id.clone(), tx);
        let worker = Worker {
            client: self.client.clone(),
            queues: self.queues.clone(),
            cancel: self.cancel.clone(),
            retry: self.retry.clone(),
            call_id: id.clone(),
        };
        self.tasks
            .spawn(worker.run(rx).instrument(info_span!("call", call_id = %id)));
    }

    /// Calls with requests not yet delivered.
    pub fn open_calls(&self) -> usize {
        self.queues.len()
    }

    /// Stops taking work and waits up to `grace` for what is in flight.
    pub async fn close(&self, grace: Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }
}

struct Worker {
    client: Arc<ZammadClient>,
    queues: Arc<DashMap<CallId, mpsc::UnboundedSender<Item>>>,
    cancel: CancellationToken,
    retry: Backoff,
    call_id: CallId,
}

/// What became of one request.
enum Outcome {
    Delivered,
    /// Zammad will not take this call's later events either.
    CallRefused,
    Dropped,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Item>) {
        let mut refused = false;
        loop {
            // At shutdown, what is queued still gets its try; then the worker ends
            // instead of waiting for events that will not come.
            let item = tokio::select! {
                biased;
                item = rx.recv() => item,
                _ = self.cancel.cancelled() => rx.try_recv().ok(),
            };
            let Some(item) = item else { break };
            let event = item.request.event;
            if refused {
                warn!(
                    event = event.as_str(),
                    "dropped: zammad refused this call's newCall"
                );
            } else {
                match self.deliver(item).await {
                    Outcome::Delivered | Outcome::Dropped => {}
                    Outcome::CallRefused => refused = true,
                }
            }
            if event == CtiEventKind::Hangup {
                break;
            }
        }
        self.queues.remove(&self.call_id);
        rx.close();
        // Anything that raced in after the hangup is dropped with a warning.
        while let Ok(item) = rx.try_recv() {
            warn!(
                event = item.request.event.as_str(),
                "dropped: event after the call's hangup"
            );
        }
    }

    async fn deliver(&mut self, item: Item) -> Outcome {
        let Item { request, decision } = item;
        let event = request.event;
        self.retry.reset();
        loop {
            let result = self.client.send(&request).await;
            let outcome = match &result {
                Ok(_) => Some(Outcome::Delivered),
                Err(e) if e.counts_as_delivered(event) => Some(Outcome::Delivered),
                Err(e) if e.retryable(event) && !self.cancel.is_cancelled() => None,
                Err(e) => Some(self.give_up(event, e)),
            };
            match outcome {
                Some(outcome) => {
                    if let Outcome::Delivered = outcome {
                        info!(
                            event = event.as_str(),
                            direction = request.direction.as_str(),
                            "delivered to zammad"
                        );
                    }
                    if let Some(tx) = decision {
                        let _ = tx.send(result);
                    }
                    return outcome;
                }
                None => {
                    let delay = self.retry.next_delay();
                    if let Err(e) = &result {
                        warn!(event = event.as_str(), error = %e, retry_in = ?delay, "zammad did not take the event; retrying");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.cancel.cancelled() => {}
                    }
                }
            }
        }
    }

    fn give_up(&self, event: CtiEventKind, e: &ZammadError) -> Outcome {
        match e {
            ZammadError::Unauthorized => {
                error!(
                    event = event.as_str(),
                    "zammad rejected the CTI token (401): check zammad.url"
                )
            }
            _ => {
                error!(event = event.as_str(), error = %e, "zammad did not take the event; giving up on it")
            }
        }
        if event == CtiEventKind::NewCall {
            Outcome::CallRefused
        } else {
            Outcome::Dropped
        }
    }
}

//! The outbox: gets every CTI request to Zammad, one call's requests one at a time and in
//! order, different calls concurrently.
//!
//! Owns the per-call queues, the retry policy (docs/zammad.md, "Errors and retries": a
//! duplicate `newCall` counts as delivered, an unknown callId is permanent, the `hangup` of
//! a missed inbound call is only retried when it certainly did not reach Zammad, and after
//! an attempt cut off the next waits until Zammad would be done with it) and what happens
//! to a call whose `newCall` Zammad refused (its later events are dropped: Zammad would
//! answer them with 500s). `push` never blocks, so the AMI side never waits on HTTP.
//!
//! With a [`Store`], every event comes in already written to the state journal (the
//! daemon commits it before pushing), an `answer` or `hangup` is marked as being sent
//! before it goes out, and each event is marked done once delivered or given up. After a
//! restart, [`Outbox::restore`] sends what was left; of the events in doubt (their sending
//! had started), all but the `hangup` of a missed inbound call ([`resend_in_doubt`]), and
//! none before `zammad.timeout` has passed. The outbox is bounded: past `max_items`
//! undelivered events, new calls are not taken ([`Outbox::admit`]); calls already in it go
//! on.

use crate::ami::backoff::Backoff;
use crate::service::journal::{Record, Store, StoredItem};
use crate::service::logging::Redact;
use crate::service::metrics::{CtiOutcome, Metrics};
use crate::zammad::cti::{CallId, CtiEventKind, CtiRequest, ZammadDecision};
use crate::zammad::{ZammadClient, ZammadError};
use dashmap::{DashMap, DashSet};
use prometheus_client::metrics::gauge::Gauge;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};

/// Whether an event whose sending had started when the daemon stopped is sent again: the
/// cheaper side of the doubt (docs/persistence.md, "Events in doubt"). An attempt that
/// certainly did not reach Zammad is unmarked before the next one, so an event still
/// marked was most likely on its way: it is sent again when a second copy costs less than
/// a lost one ([`CtiRequest::safe_to_repeat`]), which is all but the `hangup` of a missed
/// inbound call.
fn resend_in_doubt(request: &CtiRequest) -> bool {
    request.safe_to_repeat()
}

/// Zammad's answer to a call's `newCall`, for whoever acts on it (reject, dial).
pub type DecisionSender = oneshot::Sender<Result<ZammadDecision, ZammadError>>;

struct Item {
    /// The event's number in the state journal (0 without a store).
    seq: u64,
    request: CtiRequest,
    decision: Option<DecisionSender>,
    /// Not sent before then (what a restart takes back: see `restore`).
    not_before: Option<Instant>,
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
    store: Store,
    /// Events queued and not yet done with: the `azb_cti_outbox_depth` gauge itself.
    depth: Gauge,
    max_items: usize,
    metrics: Arc<Metrics>,
    /// Calls not taken because the outbox was full; their later events are dropped too.
    refused: Arc<DashSet<CallId>>,
    /// Calls whose `newCall` Zammad refused: their later events are dropped (until the
    /// hangup). Kept here, not in a worker, because a worker lives only while its call
    /// has events to send.
    refused_by_zammad: Arc<DashSet<CallId>>,
    /// Where the workers of calls a FastAGI session waits on run, and their client
    /// ([`Outbox::with_sessions_on`]).
    sessions: Option<(tokio::runtime::Handle, Arc<ZammadClient>)>,
}

impl Outbox {
    /// An outbox that marks its progress in `store` and takes at most `max_items`
    /// undelivered events (see [`Outbox::admit`]); counts into `metrics`.
    pub fn new(
        client: ZammadClient,
        cancel: CancellationToken,
        store: Store,
        max_items: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            client: Arc::new(client),
            queues: Arc::new(DashMap::new()),
            tasks: TaskTracker::new(),
            cancel,
            retry: Backoff::new(Duration::from_millis(250), Duration::from_secs(30), 0.2),
            store,
            depth: metrics.outbox_depth(),
            max_items,
            metrics,
            refused: Arc::new(DashSet::new()),
            refused_by_zammad: Arc::new(DashSet::new()),
            sessions: None,
        }
    }

    /// Runs the worker of a call that a FastAGI session waits on
    /// ([`Outbox::push_for_session`]) on `runtime`, the sessions' own, with `client`, whose
    /// connections that runtime makes and drives: Zammad's answer then wakes that
    /// runtime's thread alone, and reaches the session without a hand-over from the
    /// daemon's thread. `client` takes its turns from the outbox's own client's
    /// [`crate::zammad::client::MAX_IN_FLIGHT`]. The runtime must run until
    /// [`Outbox::close`] has returned.
    pub fn with_sessions_on(
        mut self,
        runtime: tokio::runtime::Handle,
        client: ZammadClient,
    ) -> Self {
        let client = client.sharing_turns_with(&self.client);
        self.sessions = Some((runtime, Arc::new(client)));
        self
    }

    /// Whether to take `request`: a `newCall` is refused while the outbox is full (the
    /// call is then not reported at all: its later events are refused too). Logs refusals.
    pub fn admit(&self, request: &CtiRequest) -> bool {
        let id = &request.call_id;
        if request.event == CtiEventKind::NewCall && self.depth() >= self.max_items {
            error!(
                call_id = %id,
                direction = request.direction.as_str(),
                event = "newCall",
                max_items = self.max_items,
                "outbox full (state.max_outbox): zammad is not taking events fast enough; \
                 this call is not reported"
            );
            self.metrics.outbox_full();
            self.refused.insert(id.clone());
            return false;
        }
        if self.refused.contains(id) {
            if request.event == CtiEventKind::Hangup {
                self.refused.remove(id);
            }
            return false;
        }
        true
    }

    /// Events queued and not yet delivered or given up.
    pub fn depth(&self) -> usize {
        usize::try_from(self.depth.get()).unwrap_or(0)
    }

    /// Queues a request behind the earlier ones of the same call. Never blocks. `seq` is
    /// its number in the state journal, where it must already be (0 without a store).
    pub fn push(&self, seq: u64, request: CtiRequest) {
        self.push_item(Item {
            seq,
            request,
            decision: None,
            not_before: None,
        });
    }

    /// Queues a `newCall` and hands Zammad's decision to `decision` once it is known.
    pub fn push_with_decision(&self, seq: u64, request: CtiRequest, decision: DecisionSender) {
        self.push_item(Item {
            seq,
            request,
            decision: Some(decision),
            not_before: None,
        });
    }

    /// As [`Outbox::push_with_decision`], for a FastAGI session that waits for the
    /// decision: a worker it starts runs where [`Outbox::with_sessions_on`] says.
    pub fn push_for_session(&self, seq: u64, request: CtiRequest, decision: DecisionSender) {
        self.push_item_on(
            Item {
                seq,
                request,
                decision: Some(decision),
                not_before: None,
            },
            self.sessions.as_ref(),
        );
    }

    /// Queues what the state journal held at start-up, in order (see the module doc).
    /// They wait `zammad.timeout` first, and their calls' later events behind them: an
    /// attempt of the stopped daemon (a `newCall` is not marked while sent; an `answer`
    /// or `hangup` in doubt is) may still be on its way or in Zammad's hands, and Zammad
    /// handles two events of one call at once in no sure order (an `answer` racing a
    /// `hangup` can reopen the call). By then that attempt had timed out, had it lived.
    pub fn restore(&self, items: BTreeMap<u64, StoredItem>) {
        let mut dropped = Vec::new();
        let settled = Instant::now() + self.client.timeout();
        for (seq, item) in items {
            let event = item.request.event;
            let in_doubt = item.sending;
            if in_doubt && !resend_in_doubt(&item.request) {
                warn!(
                    call_id = %item.request.call_id,
                    direction = item.request.direction.as_str(),
                    event = event.as_str(),
                    "was being sent when the daemon stopped: zammad most likely has it, and \
                     a second one would turn its missed call into a handled one; not sent again"
                );
                dropped.push(Record::Done { seq });
                continue;
            }
            if in_doubt {
                info!(
                    call_id = %item.request.call_id,
                    direction = item.request.direction.as_str(),
                    event = event.as_str(),
                    "was being sent when the daemon stopped: sent again once zammad.timeout \
                     has passed"
                );
            }
            self.push_item(Item {
                seq,
                request: item.request,
                decision: None,
                not_before: Some(settled),
            });
        }
        self.store.record(dropped);
    }

    fn push_item(&self, item: Item) {
        self.push_item_on(item, None);
    }

    /// Queues `item`; a worker it starts runs on `elsewhere` with its client, or on the
    /// current runtime with the outbox's.
    fn push_item_on(
        &self,
        item: Item,
        elsewhere: Option<&(tokio::runtime::Handle, Arc<ZammadClient>)>,
    ) {
        self.depth.inc();
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
        let client = elsewhere.map_or(&self.client, |(_, client)| client);
        let worker = Worker {
            client: client.clone(),
            queues: self.queues.clone(),
            cancel: self.cancel.clone(),
            // Each worker waits its own random share: calls that failed together retry
            // spread out, not in waves.
            retry: self.retry.clone().with_seed(fastrand::u64(..)),
            refused_by_zammad: self.refused_by_zammad.clone(),
            call_id: id.clone(),
            store: self.store.clone(),
            depth: self.depth.clone(),
            metrics: self.metrics.clone(),
        };
        let work = worker.run(rx).instrument(info_span!("call", call_id = %id));
        match elsewhere {
            Some((runtime, _)) => drop(self.tasks.spawn_on(work, runtime)),
            None => drop(self.tasks.spawn(work)),
        }
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

/// Delivers one call's queued events, in order, and ends when there are none left: an
/// open call between its events holds a queue entry, not a task.
struct Worker {
    refused_by_zammad: Arc<DashSet<CallId>>,
    client: Arc<ZammadClient>,
    queues: Arc<DashMap<CallId, mpsc::UnboundedSender<Item>>>,
    cancel: CancellationToken,
    retry: Backoff,
    call_id: CallId,
    store: Store,
    depth: Gauge,
    metrics: Arc<Metrics>,
}

/// What became of one request.
enum Outcome {
    Delivered,
    /// Zammad will not take this call's later events either.
    CallRefused,
    Dropped,
    /// Not delivered and not given up: the daemon is stopping (kept in the journal).
    Kept,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Item>) {
        let mut stopped = false;
        loop {
            let item = match rx.try_recv() {
                Ok(item) => item,
                Err(mpsc::error::TryRecvError::Empty) => {
                    // Nothing left: the worker ends and the call's queue goes with it,
                    // unless an event arrived meanwhile. `push_item` sends while holding
                    // the map's read guard, so no send slips between the check and the
                    // removal; the next event starts a new worker.
                    if self
                        .queues
                        .remove_if(&self.call_id, |_, _| rx.is_empty())
                        .is_some()
                    {
                        return;
                    }
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            };
            let event = item.request.event;
            let seq = item.seq;
            if self.refused_by_zammad.contains(&self.call_id) {
                warn!(
                    event = event.as_str(),
                    "dropped: zammad refused this call's newCall"
                );
                self.metrics.cti_request(event, CtiOutcome::Dropped, None);
            } else {
                match self.deliver(item).await {
                    Outcome::Delivered | Outcome::Dropped => {}
                    Outcome::CallRefused => {
                        self.refused_by_zammad.insert(self.call_id.clone());
                    }
                    Outcome::Kept => {
                        // Stopping while Zammad cannot take it: it stays in the journal.
                        self.depth.dec();
                        stopped = true;
                        break;
                    }
                }
            }
            self.done(seq);
            if event == CtiEventKind::Hangup {
                self.refused_by_zammad.remove(&self.call_id);
                break;
            }
        }
        self.queues.remove(&self.call_id);
        rx.close();
        let stopping = stopped || self.cancel.is_cancelled();
        while let Ok(item) = rx.try_recv() {
            if stopping {
                // Left in the journal for the next start.
                self.depth.dec();
            } else {
                warn!(
                    event = item.request.event.as_str(),
                    "dropped: event after the call's hangup"
                );
                self.metrics
                    .cti_request(item.request.event, CtiOutcome::Dropped, None);
                self.done(item.seq);
            }
        }
    }

    /// The event is done with: count it out and mark it in the journal.
    fn done(&self, seq: u64) {
        self.depth.dec();
        if seq != 0 {
            self.store.record(vec![Record::Done { seq }]);
        }
    }

    async fn deliver(&mut self, item: Item) -> Outcome {
        let Item {
            seq,
            request,
            decision,
            not_before,
        } = item;
        let event = request.event;
        if let Some(at) = not_before {
            tokio::select! {
                _ = tokio::time::sleep_until(at.into()) => {}
                // Stopping: it stays in the journal as it is, for the next start.
                _ = self.cancel.cancelled() => return Outcome::Kept,
            }
        }
        self.retry.reset();
        // An answer or hangup is marked as being sent before each attempt, and unmarked
        // when an attempt certainly did not reach Zammad, so that after a crash the
        // journal tells whether Zammad may have it.
        let journal = (seq != 0 && event != CtiEventKind::NewCall).then(|| self.store.clone());
        let mut marked = false;
        loop {
            // The client's turn first (at most so many requests in flight): a crash while
            // waiting for it must not find the event marked as maybe sent.
            let turn = self.client.turn().await;
            if let Some(store) = &journal
                && !marked
            {
                if let Err(e) = store.commit(vec![Record::Sending { seq }]).await {
                    warn!(event = event.as_str(), error = %e, "could not mark the event as being sent");
                }
                marked = true;
            }
            let started = Instant::now();
            let result = self.client.send_in_turn(turn, &request).await;
            let took = started.elapsed();
            let (outcome, counted) = match &result {
                Ok(_) => (Some(Outcome::Delivered), CtiOutcome::Delivered),
                Err(e) if e.counts_as_delivered(event) => {
                    (Some(Outcome::Delivered), CtiOutcome::Duplicate)
                }
                Err(e) if e.retryable(&request) && !self.cancel.is_cancelled() => {
                    (None, CtiOutcome::Retried)
                }
                Err(e) if e.retryable(&request) && seq != 0 => {
                    (Some(Outcome::Kept), CtiOutcome::Kept)
                }
                Err(e) => match self.give_up(event, e) {
                    Outcome::CallRefused => (Some(Outcome::CallRefused), CtiOutcome::Refused),
                    other => (Some(other), CtiOutcome::Dropped),
                },
            };
            self.metrics.cti_request(event, counted, Some(took));
            if let (Some(store), Err(e)) = (&journal, &result)
                && e.certainly_not_processed()
                && matches!(outcome, None | Some(Outcome::Kept))
            {
                if let Err(e) = store.commit(vec![Record::Unsent { seq }]).await {
                    warn!(event = event.as_str(), error = %e, "could not unmark the event");
                }
                marked = false;
            }
            match outcome {
                Some(outcome) => {
                    if let Outcome::Delivered = outcome {
                        info!(
                            event = event.as_str(),
                            direction = request.direction.as_str(),
                            from = %Redact(&request.from),
                            to = %Redact(&request.to),
                            "delivered to zammad"
                        );
                    }
                    if let Some(tx) = decision {
                        let _ = tx.send(result);
                    }
                    return outcome;
                }
                None => {
                    let mut delay = self.retry.next_delay();
                    if let Err(e) = &result
                        && !e.certainly_not_processed()
                    {
                        // Zammad may still be handling that attempt (a proxy's 504, a
                        // timeout): the next waits until it would be over, as after a
                        // restart, so that two of the call's requests never race there.
                        delay = delay.max(self.client.timeout());
                    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::standins::zammad::{FakeZammad, FakeZammadConfig};
    use crate::zammad::cti::{Cause, Direction};
    use std::path::PathBuf;

    fn request(event: CtiEventKind, direction: Direction, cause: Option<Cause>) -> CtiRequest {
        call_request("1.1", event, direction, cause)
    }

    fn call_request(
        call_id: &str,
        event: CtiEventKind,
        direction: Direction,
        cause: Option<Cause>,
    ) -> CtiRequest {
        CtiRequest {
            event,
            direction,
            call_id: CallId(call_id.into()),
            from: "4930555".into(),
            to: "4930100".into(),
            user: None,
            queue: None,
            answering_number: None,
            cause,
        }
    }

    #[test]
    fn in_doubt_only_the_hangup_of_a_missed_inbound_call_is_not_sent_again() {
        use CtiEventKind::{Answer, Hangup, NewCall};
        use Direction::{In, Out};
        for (event, direction, cause, resend) in [
            (NewCall, In, None, true),
            (NewCall, Out, None, true),
            (Answer, In, None, true),
            (Answer, Out, None, true),
            (Hangup, In, Some(Cause::NormalClearing), true),
            (Hangup, In, Some(Cause::Forwarded), true),
            (Hangup, Out, Some(Cause::NormalClearing), true),
            (Hangup, Out, Some(Cause::NoAnswer), true),
            (Hangup, In, Some(Cause::Cancel), false),
            (Hangup, In, Some(Cause::NoAnswer), false),
            (Hangup, In, Some(Cause::Busy), false),
            (Hangup, In, None, false),
        ] {
            assert_eq!(
                resend_in_doubt(&request(event, direction, cause)),
                resend,
                "{event:?} {direction:?} {cause:?}"
            );
        }
    }

    /// An outbox for Zammad at `url`, its journal in a new dir (returned, for removal),
    /// whose sessions' calls run on `sessions`.
    fn outbox_with_sessions_on(url: &str, sessions: tokio::runtime::Handle) -> (Outbox, PathBuf) {
        let client = || {
            ZammadClient::new(
                secrecy::SecretString::from(url.to_string()),
                Duration::from_secs(5),
            )
            .unwrap()
        };
        let dir = std::env::temp_dir().join(format!(
            "azb-outbox-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let (store, _, _sync) = Store::open(&dir).unwrap();
        let outbox = Outbox::new(
            client(),
            CancellationToken::new(),
            store,
            100,
            Arc::new(Metrics::new()),
        )
        .with_sessions_on(sessions, client());
        (outbox, dir)
    }

    /// A call a FastAGI session waits on is sent from the sessions' runtime, with the
    /// client made for it there; any other call from the runtime that pushes it. Shown by
    /// holding the sessions' runtime still: the session's call waits for it, the other
    /// does not.
    #[tokio::test]
    async fn a_sessions_call_goes_out_from_the_sessions_runtime() {
        use CtiEventKind::NewCall;
        let zammad = FakeZammad::start(FakeZammadConfig::default())
            .await
            .unwrap();
        let sessions = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (outbox, dir) = outbox_with_sessions_on(&zammad.url(), sessions.handle().clone());
        let (session_tx, mut session_rx) = oneshot::channel();
        let (ami_tx, ami_rx) = oneshot::channel();
        outbox.push_for_session(
            1,
            call_request("1.1", NewCall, Direction::In, None),
            session_tx,
        );
        outbox.push_with_decision(2, call_request("2.1", NewCall, Direction::In, None), ami_tx);

        let ami = tokio::time::timeout(Duration::from_secs(5), ami_rx).await;
        assert!(
            matches!(ami, Ok(Ok(Ok(_)))),
            "the other call's decision: {ami:?}"
        );
        let waiting = tokio::time::timeout(Duration::from_millis(300), &mut session_rx).await;
        assert!(
            waiting.is_err(),
            "sent while the sessions' runtime stood still"
        );
        let sent: Vec<_> = zammad
            .requests()
            .iter()
            .map(|r| r.params["callId"].clone())
            .collect();
        assert_eq!(sent, ["2.1"]);

        let (stop, stopped) = oneshot::channel::<()>();
        let driver = std::thread::spawn(move || {
            sessions.block_on(async {
                let _ = stopped.await;
            })
        });
        let session = tokio::time::timeout(Duration::from_secs(5), session_rx).await;
        assert!(
            matches!(session, Ok(Ok(Ok(_)))),
            "the session's decision: {session:?}"
        );
        assert_eq!(zammad.requests().len(), 2);
        assert!(
            outbox.close(Duration::from_secs(5)).await,
            "both workers ended"
        );
        drop(stop);
        driver.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The sessions' client takes its turns from the outbox's own: one bound on requests
    /// in flight, whichever runtime sends them.
    #[tokio::test]
    async fn the_sessions_client_shares_the_outbox_clients_turns() {
        let url = "http://127.0.0.1:9/api/v1/cti/token";
        let (outbox, dir) = outbox_with_sessions_on(url, tokio::runtime::Handle::current());
        let mut taken = Vec::new();
        for _ in 0..crate::zammad::client::MAX_IN_FLIGHT {
            taken.push(outbox.client.turn().await);
        }
        let sessions = &outbox.sessions.as_ref().expect("set").1;
        let wait = Duration::from_millis(100);
        assert!(tokio::time::timeout(wait, sessions.turn()).await.is_err());
        taken.pop();
        assert!(tokio::time::timeout(wait, sessions.turn()).await.is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! Direction rules: which channel is a call's origin, and whether the call is inbound,
//! outbound, or not Zammad's at all; who the calling agent of an outbound call is.

use super::Tracker;
use super::model::ShortStr;
use crate::ami::AmiMessage;
use crate::config::AgentEntry;
use crate::zammad::cti::{CtiRequest, Direction};

impl Tracker {
    /// Who places an outbound call from the channel `name` showing caller number `caller`.
    /// Two witnesses: the endpoint in the channel's name (`PJSIP/201-0000002a` → `201`)
    /// and the caller ID, which the dialplan may have rewritten to the trunk's outbound
    /// number before the Dial (FreePBX does) or set to the extension of a phone whose
    /// endpoint is named otherwise (an account id). FreePBX states the calling extension
    /// itself in `AMPUSER`, which wins when it is an extension. Then an agent of `[agents]`
    /// wins, then the caller ID when it is an extension, then the endpoint, then the
    /// caller ID as is.
    pub(super) fn calling_agent(
        &self,
        name: &str,
        caller: Option<&str>,
        ampuser: Option<&str>,
    ) -> Option<ShortStr> {
        let endpoint = self.extension_of(name);
        let known = |n: &str| self.settings.agents.contains_key(n);
        if let Some(a) = ampuser.filter(|a| known(a) || self.settings.plan.is_extension(a)) {
            return Some(a.into());
        }
        if let Some(c) = caller.filter(|c| known(c)) {
            return Some(c.into());
        }
        if let Some(e) = endpoint.as_deref().filter(|e| known(e)) {
            return Some(e.into());
        }
        if let Some(c) = caller.filter(|c| self.settings.plan.is_extension(c)) {
            return Some(c.into());
        }
        endpoint.or_else(|| caller.map(Into::into))
    }

    /// `from` of an outbound call placed by `agent` (an extension or a number): the
    /// agent's configured `number`, else the number itself, normalised.
    pub(super) fn outbound_from(&self, agent: &str) -> String {
        match self.settings.agents.get(agent).and_then(AgentEntry::number) {
            Some(n) => n.to_string(),
            None => self.settings.plan.normalise(agent),
        }
    }

    /// A channel in state Ring runs the dialplan as an incoming leg: in an inbound context
    /// it makes its call inbound (it is the external party); the first one in an outbound
    /// context is the phone whose dialed number may make the call outbound.
    pub(super) fn detect_origin(&mut self, msg: &AmiMessage, uid: &str, key: &str) {
        let dialed = self.channels.get(uid).is_some_and(|c| c.dialed);
        let Some(call) = self.calls.get_mut(key) else {
            return;
        };
        if call.direction.is_some() {
            return;
        }
        let context = msg.get("Context").unwrap_or("");
        let exten = msg.get("Exten").unwrap_or("");
        if self.settings.inbound_contexts.contains(context) {
            if dialed {
                // A leg some Dial requested (an outgoing channel, e.g. to the trunk, whose
                // driver put it in the trunk's inbound context): not a caller.
                return;
            }
            call.direction = Some(Direction::In);
            call.origin = Some(uid.into());
            call.to = if exten.is_empty() || exten == "s" {
                ShortStr::default()
            } else {
                self.settings.plan.normalise(exten).into()
            };
            self.refresh_caller(key, uid);
        } else if call.out_origin.is_none()
            && !exten.is_empty()
            && exten != "s"
            && self.settings.outbound_contexts.contains(context)
        {
            call.out_origin = Some(Box::new((uid.into(), exten.into())));
        }
    }

    /// A channel that dials from an outbound context without having come in there in state
    /// Ring: an originated channel (AMI `Originate`, a call file, a CRM's click-to-dial)
    /// that rang the agent's phone first and, answered, now runs the dialplan. Its dial
    /// makes the call the agent's outbound call, as a phone dialing out would. A channel
    /// that some Dial requested (a leg of another call's routing) is not one.
    pub(super) fn detect_originated_origin(&mut self, msg: &AmiMessage, caller: &str, key: &str) {
        let dialed = self.channels.get(caller).is_none_or(|c| c.dialed);
        let Some(call) = self.calls.get_mut(key) else {
            return;
        };
        if dialed || call.direction.is_some() || call.out_origin.is_some() {
            return;
        }
        let context = msg.get("Context").unwrap_or("");
        let exten = msg.get("Exten").unwrap_or("");
        if !exten.is_empty() && exten != "s" && self.settings.outbound_contexts.contains(context) {
            call.out_origin = Some(Box::new((caller.into(), exten.into())));
        }
    }

    /// Outbound: the phone that came in through an outbound context (the call's
    /// `out_origin`) dials out, to an external number or (`to_trunk`) a trunk leg whose
    /// number is `dest_number`.
    pub(super) fn make_outbound(
        &mut self,
        key: &str,
        to_trunk: bool,
        dest_number: Option<&str>,
        out: &mut Vec<CtiRequest>,
    ) {
        let Some(call) = self.calls.get_mut(key) else {
            return;
        };
        let Some((origin, dialed)) = call.out_origin.as_deref().cloned() else {
            return;
        };
        let external = !self.settings.plan.is_extension(&dialed);
        if !(external || to_trunk) {
            return;
        }
        let number = if external {
            dialed.to_string()
        } else {
            dest_number.unwrap_or(&dialed).to_string()
        };
        call.direction = Some(Direction::Out);
        call.origin = Some(origin.clone());
        call.to = self.settings.plan.normalise(&number).into();
        let caller = self
            .channels
            .get(&*origin)
            .and_then(|c| c.caller_num.clone());
        let agent = self
            .channels
            .get(&*origin)
            .and_then(|c| self.calling_agent(&c.name, caller.as_deref(), c.ampuser()));
        // The number the far end sees: the agent's configured one, else the caller ID
        // the phone's channel presents (which the dialplan may have set to the trunk's
        // outbound number), else the agent's extension.
        let configured = agent
            .as_deref()
            .and_then(|a| self.settings.agents.get(a))
            .and_then(AgentEntry::number);
        let from = match (configured, caller.as_deref()) {
            (Some(number), _) => number.to_string(),
            (None, Some(caller)) => self.settings.plan.normalise(caller),
            (None, None) => self.outbound_from(agent.as_deref().unwrap_or("")),
        };
        let call = self.calls.get_mut(key).expect("checked above");
        call.from = from.into();
        call.agent = agent;
        self.report_new_call(key, out);
    }
}

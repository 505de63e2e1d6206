//! Proposal generators: the first stage of two-stage detectors.

pub mod proposal_utils;
pub mod rpn;

pub use proposal_utils::{find_top_rpn_proposals, ProposalLimits, Proposals, RpnOutputs};
pub use rpn::Rpn;

//! Proposal generators: the first stage of two-stage detectors.

pub mod device_proposals;
pub mod proposal_utils;
pub mod rpn;

pub use device_proposals::find_top_rpn_proposals_on_device;
pub use proposal_utils::{find_top_rpn_proposals, ProposalLimits, Proposals, RpnOutputs};
pub use rpn::Rpn;

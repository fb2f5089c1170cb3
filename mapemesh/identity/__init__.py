"""Identities and authorization on the event path (seed 7.1.4): a certificate per component (`pki`), signed
commands (`dsse`: the CloudEvents verifiability extension) and the command policy checked where a command is
applied (`guard`), and the OIDC-style tokens senders present to a broker with Knative's `authentication-oidc` on
(`tokens`; checked by `mapemesh.eventing.authz`)."""

from mapemesh.identity.dsse import Unverified, sign, verify
from mapemesh.identity.guard import COMMANDS, Guard, Verdict, refusal, sign_commands, signer
from mapemesh.identity.pki import Authority, Identity, IdentityError, TrustStore, subject_of

__all__ = ["COMMANDS", "Authority", "Guard", "Identity", "IdentityError", "TrustStore", "Unverified", "Verdict",
           "refusal", "sign", "sign_commands", "signer", "subject_of", "verify"]

"""Authenticating CDS clients (EHRs): the JWT every call carries, per CDS Hooks 2.0 §Trusting CDS Clients."""

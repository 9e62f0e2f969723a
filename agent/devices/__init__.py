"""Device management: SR-IOV provisioning, driver binding and VF settings."""

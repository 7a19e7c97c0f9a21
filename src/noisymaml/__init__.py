"""noisymaml: study and cure meta-overfitting with gradient noise and meta-test feedback."""

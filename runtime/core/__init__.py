"""Infrastructure every product shares: tensor contract, model folder, session, backends, comparison, I/O."""

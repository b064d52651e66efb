"""What the trainer learns and how: the policy network and the supervised (Sobolev) phase."""

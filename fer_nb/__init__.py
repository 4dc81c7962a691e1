"""fer_nb: the shared package of the FER metric-learning book."""

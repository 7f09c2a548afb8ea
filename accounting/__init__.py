"""Privacy accounting: events, Renyi DP and PLD accountants, calibration."""

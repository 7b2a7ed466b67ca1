"""How good a segmentation is: Dice, HD95 and ASD, and scoring a trained model on labeled volumes."""

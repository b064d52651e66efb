"""The ROS-free policy controller: the safety layer around the ONNX policy and the MPC plan follower."""

"""Thin rclpy nodes over the ROS-free core (each module has a main())."""
